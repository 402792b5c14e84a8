"""Early-fusion pre-training (chapter 05): the mixing schedules, mixed-document packing, the K2.5 stages."""
