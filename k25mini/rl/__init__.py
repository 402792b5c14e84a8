"""RL for k25mini: the K2.5 policy loss and its relatives (one registry), group baselines, the PARL reward.

    from k25mini.rl import get_loss, group_advantages
    adv = group_advantages(rewards, group_size=K)              # r − mean of the K samples (no std)
    loss, stats = get_loss("kimi_k25")(logp, old_logp, adv, mask, alpha=0.5, beta=2.0, tau=0.01)

    # or the whole update step of a causal LM on sampled completions (k25mini.rl.step):
    stats = policy_update(model, optimizer, pack_completions(seqs, pad_id), loss="kimi_k25", updates=2, **hp)

    # a vision-language model on world items (docs/rl.md): sample, reward, advantage, update
    groups = sample(model, prompts, media, k=4, temperature=1.0, top_p=0.95)   # k25mini.rl.rollout
    stats = rl_iteration(model, optimizer, items, k=4)                         # k25mini.rl.iteration
    r = reward(item, "3")                                                      # k25mini.rl.rewards
"""

from k25mini.rl.advantages import group_advantages, group_ids_from_size
from k25mini.rl.iteration import rl_iteration
from k25mini.rl.losses import LOG_RATIO_CLAMP, LOSSES, get_loss, policy_loss, register_loss
from k25mini.rl.parl import PARLConfig, PARLReward, anneal_weight, parl_reward, r_finish, r_parallel
from k25mini.rl.rewards import format_reward, reward
from k25mini.rl.rollout import Sample, Trajectory, rollout_with_tool, sample, sequence_logprobs
from k25mini.rl.step import CompletionBatch, completion_logp, pack_completions, pad_completions, policy_update
from k25mini.rl.toggle import Toggle, budgets_from_lengths

__all__ = [
    "CompletionBatch",
    "Sample",
    "Toggle",
    "Trajectory",
    "budgets_from_lengths",
    "format_reward",
    "reward",
    "rl_iteration",
    "rollout_with_tool",
    "sample",
    "sequence_logprobs",
    "LOG_RATIO_CLAMP",
    "LOSSES",
    "PARLConfig",
    "PARLReward",
    "anneal_weight",
    "completion_logp",
    "get_loss",
    "group_advantages",
    "group_ids_from_size",
    "pack_completions",
    "pad_completions",
    "parl_reward",
    "policy_loss",
    "policy_update",
    "r_finish",
    "r_parallel",
    "register_loss",
]
