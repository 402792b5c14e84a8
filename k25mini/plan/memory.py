"""Per-GPU memory of training (and serving) a K2.5-shaped model on a mesh, computed from the config alone.

The planner lists every parameter tensor analytically (:func:`param_specs`: name, shape, how many layers hold it,
expert or not, Muon or AdamW, which pipeline part), then places each tensor on one GPU of a mesh:

* ``gpus = pp * dp``: ``pp`` pipeline stages (decoder layers split evenly, stage 0 also holds the vision tower and
  the embedding, the last stage the final norm and ``lm_head``), ``dp`` data-parallel ranks per stage.
* ``ep`` divides ``dp`` (expert parallelism borrows data-parallel ranks, as in torchtitan and K2's setup): a GPU
  holds ``n_routed_experts / ep`` routed experts of each of its MoE layers.
* ``sharding="fsdp"`` (ZeRO-3, FSDP2 ``fully_shard``): parameters, gradients and optimizer state are sharded on
  dim 0 over the ``dp`` ranks (routed experts over the ``dp / ep`` ranks that hold the same experts), padded to
  ``ceil(dim0 / n)`` rows as FSDP2 pads; the all-gathered layers in flight (two decoder layers, and the root unit:
  embedding, final norm, ``lm_head``) are counted separately.
* ``sharding="zero1"`` (K2's setup, K2 arXiv 2507.20534 §2.4.2): parameters and gradients are whole on every
  data-parallel rank (experts: the rank's ``E / ep``), only the optimizer state is split over ``dp`` (experts:
  ``dp / ep``), flattened, so without padding.

Bytes per element come from a :class:`Precision` (``"fp32"`` or ``"bf16"``: bf16 weights, fp32 gradient
accumulation, an fp32 master copy held with the optimizer state). Optimizer state: Muon keeps one momentum
buffer per element, AdamW two moments (``k25mini.optim``; which tensors get which follows
:func:`k25mini.optim.build.param_groups_for`).

Activations (:func:`activation_bytes`) count the tensors autograd saves for backward in this package's
implementation (the fused SDPA path: no ``S x S`` matrix), per token and layer, with or without full per-layer
activation checkpointing; a 1F1B pipeline keeps ``pp`` micro-batches in flight on stage 0. The MLA KV cache for
inference is :func:`kv_cache_bytes` (``kv_lora_rank + qk_rope_head_dim`` numbers per token and layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from k25mini.config import ModelConfig, TextConfig, VisionConfig, kv_cache_bytes_per_token

__all__ = [
    "ParamSpec",
    "Precision",
    "PRECISIONS",
    "Mesh",
    "MemoryPlan",
    "param_specs",
    "activation_elems_per_token",
    "activation_bytes",
    "kv_cache_bytes",
    "plan_memory",
    "candidate_plans",
    "best_plan",
    "smallest_plan",
    "serving_plan",
    "GIB",
]

GIB = 2**30


# --------------------------------------------------------------------------------------------
# What the model holds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor kind. ``count``: how many copies (e.g. one per MoE layer). ``part``: ``vision`` |
    ``embed`` | ``dense_layer`` | ``moe_layer`` | ``head``. ``optim``: ``muon`` | ``adamw``."""

    name: str
    shape: tuple[int, ...]
    count: int
    part: str
    optim: str
    expert: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _vision_specs(v: VisionConfig, text_hidden: int) -> list[ParamSpec]:
    D, I, p, L = v.hidden_size, v.intermediate_size, v.patch_size, v.num_hidden_layers
    M = v.mm_hidden_size

    def vs(name: str, shape: tuple[int, ...], count: int = 1, optim: str = "adamw") -> ParamSpec:
        return ParamSpec(f"vision_tower.{name}", shape, count, "vision", optim)

    out = [vs("patch_embed.proj.weight", (D, 3, p, p)), vs("patch_embed.proj.bias", (D,)),
           vs("patch_embed.pos_emb.weight", (v.init_pos_emb_height, v.init_pos_emb_width, D))]
    for n in ("norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias"):
        out.append(vs(f"encoder.blocks.*.{n}", (D,), L))
    for n, o, i in (("wqkv", 3 * D, D), ("wo", D, D), ("mlp.fc0", I, D), ("mlp.fc1", D, I)):
        out += [vs(f"encoder.blocks.*.{n}.weight", (o, i), L, "muon"), vs(f"encoder.blocks.*.{n}.bias", (o,), L)]
    out += [vs("encoder.final_layernorm.weight", (D,)), vs("encoder.final_layernorm.bias", (D,)),
            vs("projector.pre_norm.weight", (D,)), vs("projector.pre_norm.bias", (D,)),
            vs("projector.linear_1.weight", (M, M), optim="muon"), vs("projector.linear_1.bias", (M,)),
            vs("projector.linear_2.weight", (text_hidden, M), optim="muon"), vs("projector.linear_2.bias",
                                                                                  (text_hidden,))]
    return out


def _layer_specs(t: TextConfig, part: str, count: int) -> list[ParamSpec]:
    D, H = t.hidden_size, t.num_attention_heads
    pre = "language_model.model.layers.*."

    def ls(name: str, shape: tuple[int, ...], optim: str = "muon", expert: bool = False) -> ParamSpec:
        return ParamSpec(pre + name, shape, count, part, optim, expert)

    out = [ls("input_layernorm.weight", (D,), "adamw"), ls("post_attention_layernorm.weight", (D,), "adamw")]
    if t.q_lora_rank is None:
        out.append(ls("self_attn.q_proj.weight", (H * t.qk_head_dim, D)))
    else:
        out += [ls("self_attn.q_a_proj.weight", (t.q_lora_rank, D)),
                ls("self_attn.q_a_norm.weight", (t.q_lora_rank,), "adamw"),
                ls("self_attn.q_b_proj.weight", (H * t.qk_head_dim, t.q_lora_rank))]
    out += [ls("self_attn.kv_a_proj.weight", (t.kv_lora_rank + t.qk_rope_head_dim, D)),
            ls("self_attn.kv_a_norm.weight", (t.kv_lora_rank,), "adamw"),
            ls("self_attn.kv_b_proj.weight", (H * (t.qk_nope_head_dim + t.v_head_dim), t.kv_lora_rank)),
            ls("self_attn.o_proj.weight", (D, H * t.v_head_dim))]
    if part == "dense_layer":
        F = t.intermediate_size
        out += [ls("mlp.gate_proj.weight", (F, D)), ls("mlp.up_proj.weight", (F, D)),
                ls("mlp.down_proj.weight", (D, F))]
    else:
        E, F = t.n_routed_experts, t.moe_intermediate_size
        out += [ls("mlp.router.weight", (E, D), "adamw"),
                ls("mlp.experts.w_gate_up", (E, D, 2 * F), expert=True),
                ls("mlp.experts.w_down", (E, F, D), expert=True)]
        if t.n_shared_experts:
            Fs = t.n_shared_experts * F
            out += [ls("mlp.shared_experts.gate_proj.weight", (Fs, D)), ls("mlp.shared_experts.up_proj.weight",
                                                                            (Fs, D)),
                    ls("mlp.shared_experts.down_proj.weight", (D, Fs))]
    return out


def param_specs(config: ModelConfig | TextConfig) -> list[ParamSpec]:
    """Every parameter tensor of :class:`~k25mini.multimodal.K25ForConditionalGeneration` (or of the text-only
    ``K2ForCausalLM`` for a config without vision), listed from the config. Sums to ``count_params(config)``."""
    if isinstance(config, TextConfig):
        config = ModelConfig(text=config)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig or TextConfig, got {type(config).__name__}")
    t = config.text
    out = _vision_specs(config.vision, t.hidden_size) if config.vision is not None else []
    out.append(ParamSpec("language_model.model.embed_tokens.weight", (t.vocab_size, t.hidden_size), 1, "embed",
                         "adamw"))
    if t.first_k_dense_replace:
        out += _layer_specs(t, "dense_layer", t.first_k_dense_replace)
    if t.num_moe_layers:
        out += _layer_specs(t, "moe_layer", t.num_moe_layers)
    out.append(ParamSpec("language_model.model.norm.weight", (t.hidden_size,), 1, "head", "adamw"))
    if not t.tie_word_embeddings:
        out.append(ParamSpec("language_model.lm_head.weight", (t.vocab_size, t.hidden_size), 1, "head", "adamw"))
    return out


# --------------------------------------------------------------------------------------------
# Precision and mesh
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """Bytes per element: stored parameters, gradients, the fp32 master copy (0: the parameters are the master)
    and each optimizer-state element; ``act`` for activations."""

    name: str
    param: int
    grad: int
    master: int
    state: int
    act: int


PRECISIONS = {
    "fp32": Precision("fp32", param=4, grad=4, master=0, state=4, act=4),
    # K2 arXiv 2507.20534 §2.4.2: "model parameters in BF16 and their gradient accumulation buffer in FP32"
    "bf16": Precision("bf16", param=2, grad=4, master=4, state=4, act=2),
}

SHARDINGS = ("fsdp", "zero1")


def _pos_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name} must be an int > 0, got {v!r}")
    return v


@dataclass(frozen=True)
class Mesh:
    """``gpus = pp * dp``; ``ep`` divides ``dp``. ``sharding``: ``fsdp`` (ZeRO-3) or ``zero1``."""

    dp: int
    ep: int = 1
    pp: int = 1
    sharding: str = "fsdp"

    def __post_init__(self) -> None:
        for n in ("dp", "ep", "pp"):
            _pos_int(f"Mesh.{n}", getattr(self, n))
        if self.dp % self.ep:
            raise ValueError(f"Mesh.ep ({self.ep}) must divide Mesh.dp ({self.dp}): expert parallelism borrows "
                             "data-parallel ranks")
        if self.sharding not in SHARDINGS:
            raise ValueError(f"Mesh.sharding must be one of {SHARDINGS}, got {self.sharding!r}")

    @property
    def gpus(self) -> int:
        return self.dp * self.pp


def _stage_layers(t: TextConfig, pp: int) -> list[tuple[int, int]]:
    """(dense layers, MoE layers) of each pipeline stage: layers split as evenly as possible, in order."""
    L = t.num_hidden_layers
    if pp > L:
        raise ValueError(f"Mesh.pp ({pp}) must be <= num_hidden_layers ({L})")
    bounds = [round(i * L / pp) for i in range(pp + 1)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        dense = max(0, min(b, t.first_k_dense_replace) - a)
        out.append((dense, (b - a) - dense))
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------
ATTENTION = ("flash", "math")


def activation_elems_per_token(t: TextConfig, moe: bool, seq_len: int = 1, attention: str = "flash"
                               ) -> dict[str, float]:
    """Numbers autograd saves per token for one decoder layer (training forward, no checkpointing).

    Counted from this package's code (fp32; in bf16 the norms' float32 internals are ~2x wider, see
    :func:`activation_bytes`). Attention (:mod:`k25mini.model.mla`, fused SDPA): input norm (its input, the
    normalised value before and after the weight, 1/rms: 3D+1), q_a_norm (3 q_lora+1), kv_a_proj output and
    kv_a_norm (kv_lora+rope + 2 kv_lora+1), q and k after the RoPE concat (2 H qk), kv_b_proj output
    (H (nope+v)), o_proj input (H v), and what SDPA keeps: with ``attention="flash"`` (a fused kernel, as on
    GPU) its output and log-sum-exp (H v + H); with ``"math"`` (PyTorch's CPU fallback when the value head
    width differs from the query's, as in MLA) the softmax probabilities, H * seq_len per token.
    MoE (:mod:`k25mini.model.moe`):
    post-attention norm (3D+1), router sigmoid scores (E) and top-k bookkeeping, per routed (token, expert)
    pair the gathered input, gate/up output, SwiGLU product and expert output (D + 2F + F + D) plus ids and
    weights, and the shared expert (4 F_s). Dense layer: SwiGLU of width ``intermediate_size`` (4 F).
    """
    D, H = t.hidden_size, t.num_attention_heads
    q = t.q_lora_rank or 0
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    attn = (3 * D + 1) + (3 * q + 1 if q else 0) + (t.kv_lora_rank + t.qk_rope_head_dim) + (2 * t.kv_lora_rank + 1) \
        + 2 * H * t.qk_head_dim + H * (t.qk_nope_head_dim + t.v_head_dim) + H * t.v_head_dim
    attn += (H * t.v_head_dim + H) if attention == "flash" else H * seq_len
    norm2 = 3 * D + 1
    if moe:
        K, E, F = t.num_experts_per_tok, t.n_routed_experts, t.moe_intermediate_size
        routed = K * (2 * D + 3 * F + 4)
        router = E + 3 * K
        shared = 4 * t.n_shared_experts * F
        mlp = {"router": router, "routed_experts": routed, "shared_expert": shared}
    else:
        mlp = {"dense_mlp": 4 * t.intermediate_size}
    return {"attention": attn, "mlp_norm": norm2, **mlp}


def _layer_act_bytes(t: TextConfig, moe: bool, prec: Precision, seq_len: int, attention: str) -> float:
    """Bytes per token for one layer; norm internals are float32 whatever the activation dtype."""
    e = activation_elems_per_token(t, moe, seq_len, attention)
    norm_fp32 = 2 * t.hidden_size + 2 * t.hidden_size + 2 * (t.q_lora_rank or 0) + 2 * t.kv_lora_rank
    wide = norm_fp32 * (4 - prec.act)
    if moe:  # the router scores in float32: a float32 copy of its input when activations are narrower
        wide += t.hidden_size * 4 * (prec.act < 4) + t.n_routed_experts * (4 - prec.act)
    if attention == "math" and prec.act < 4:
        # PyTorch's math SDPA on CPU keeps float32 copies of q, k, v (in place of q, k and the kv_b_proj output)
        # and float32 probabilities
        H = t.num_attention_heads
        wide += 2 * H * t.qk_head_dim * (4 - prec.act) + H * t.v_head_dim * 4 \
            - H * (t.qk_nope_head_dim + t.v_head_dim) * prec.act + H * seq_len * (4 - prec.act)
    return sum(e.values()) * prec.act + wide


def _head_act_bytes(t: TextConfig, prec: Precision) -> float:
    """Final norm (3D+1, its output is lm_head's input) and the fp32 log-softmax of the cross-entropy (V)."""
    return (3 * t.hidden_size + 1) * 4 + t.vocab_size * 4


def activation_bytes(config: ModelConfig | TextConfig, micro_batch: int, seq_len: int, *,
                     checkpointing: bool = False, precision: str | Precision = "fp32", layers: tuple[int, int]
                     | None = None, head: bool = True, in_flight: int = 1, attention: str = "flash"
                     ) -> dict[str, float]:
    """Activation bytes of one micro-batch ``[micro_batch, seq_len]`` on one GPU.

    ``layers``: (dense, MoE) layers on this GPU (default: the whole backbone). ``checkpointing``: full per-layer
    recompute; only each layer's input (D per token) stays, plus one layer's activations while it is recomputed.
    ``in_flight``: micro-batches held at once (1F1B stage 0: ``pp``). Returns ``{"stored", "recompute_peak",
    "total"}`` in bytes (``stored`` scales with ``in_flight``, the recompute peak does not). ``attention``: ``flash``
    or ``math`` (see :func:`activation_elems_per_token`).
    """
    t = config.text if isinstance(config, ModelConfig) else config
    if not isinstance(t, TextConfig):
        raise ValueError(f"config must be a ModelConfig or TextConfig, got {type(config).__name__}")
    _pos_int("micro_batch", micro_batch)
    _pos_int("seq_len", seq_len)
    _pos_int("in_flight", in_flight)
    prec = _precision(precision)
    dense, moe = layers if layers is not None else (t.first_k_dense_replace, t.num_moe_layers)
    T = micro_batch * seq_len
    per = {moe_: _layer_act_bytes(t, moe_, prec, seq_len, attention) for moe_ in (False, True)}
    heavy = max(per[False] if dense else 0.0, per[True] if moe else 0.0)
    if checkpointing:
        stored = (dense + moe) * t.hidden_size * prec.act * T
        peak = heavy * T
    else:
        stored = (dense * per[False] + moe * per[True]) * T
        peak = 0.0
    rope = 2 * t.qk_rope_head_dim * prec.act * T  # cos/sin (activation dtype), shared by every layer
    stored += rope + (_head_act_bytes(t, prec) * T if head else 0.0)
    stored *= in_flight
    return {"stored": stored, "recompute_peak": peak, "total": stored + peak}


def kv_cache_bytes(config: ModelConfig | TextConfig, batch: int, context: int, bytes_per_elem: int = 2) -> int:
    """MLA KV cache of ``batch`` sequences of ``context`` tokens: (kv_lora_rank + qk_rope_head_dim) per token and
    layer (:func:`k25mini.config.kv_cache_bytes_per_token`)."""
    t = config.text if isinstance(config, ModelConfig) else config
    if not isinstance(t, TextConfig):
        raise ValueError(f"config must be a ModelConfig or TextConfig, got {type(config).__name__}")
    _pos_int("batch", batch)
    _pos_int("context", context)
    _pos_int("bytes_per_elem", bytes_per_elem)
    return batch * context * kv_cache_bytes_per_token(t, "mla", bytes_per_elem)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def _precision(p: str | Precision) -> Precision:
    if isinstance(p, Precision):
        return p
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)} or a Precision, got {p!r}")
    return PRECISIONS[p]


@dataclass
class MemoryPlan:
    """Per-GPU bytes on the most loaded pipeline stage (``stage``); ``by_stage`` holds every stage's total."""

    mesh: Mesh
    precision: str
    stage: int
    params: float
    grads: float
    optimizer: float
    master: float
    gather_buffers: float
    activations: float
    recompute_peak: float
    elems: dict[str, float] = field(default_factory=dict)
    by_stage: list[float] = field(default_factory=list)
    offload: bool = False  # master copy + optimizer state live in host memory (K2 §2.4.2 on small clusters)

    @property
    def states(self) -> float:
        """Parameters + gradients + master copy + optimizer state (what K2 calls 'all states')."""
        return self.params + self.grads + self.master + self.optimizer

    @property
    def host(self) -> float:
        """Bytes kept in host memory (the master copy and optimizer state when ``offload``)."""
        return self.master + self.optimizer if self.offload else 0.0

    @property
    def total(self) -> float:
        """GPU bytes (host-offloaded state excluded)."""
        return self.states - self.host + self.gather_buffers + self.activations + self.recompute_peak

    def fits(self, gpu_mem_gib: float, reserve: float = 0.1) -> bool:
        """Whether ``total`` fits in ``gpu_mem_gib`` GiB minus a ``reserve`` fraction (allocator, NCCL, kernels)."""
        return self.total <= gpu_mem_gib * GIB * (1 - reserve)

    def rows(self) -> list[tuple[str, float]]:
        where = " (host)" if self.offload else ""
        return [("parameters", self.params), ("gradients", self.grads), ("fp32 master" + where, self.master),
                ("optimizer state" + where, self.optimizer), ("FSDP all-gather buffers", self.gather_buffers),
                ("activations (stored)", self.activations), ("recompute peak", self.recompute_peak),
                ("total", self.total)]


def plan_memory(config: ModelConfig | TextConfig, mesh: Mesh, *, precision: str | Precision = "bf16",
                micro_batch: int = 1, seq_len: int = 4096, checkpointing: bool = True,
                optimizer: str = "muon", offload: bool = False, attention: str = "flash") -> MemoryPlan:
    """Per-GPU memory of one training step of ``config`` on ``mesh`` (see the module docstring).

    ``optimizer``: ``muon`` (MuonClip: Muon momentum for matrices, AdamW moments for the rest) or ``adamw``
    (two moments for everything). Activations: one micro-batch ``[micro_batch, seq_len]``, ``pp`` of them in flight
    on stage 0 (1F1B). ``offload``: the master copy and optimizer state stay in host memory (not in ``total``).
    Returns the plan of the stage with the largest total.
    """
    if isinstance(config, TextConfig):
        config = ModelConfig(text=config)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config must be a ModelConfig or TextConfig, got {type(config).__name__}")
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a Mesh, got {type(mesh).__name__}")
    if optimizer not in ("muon", "adamw"):
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
    if not isinstance(checkpointing, bool):
        raise ValueError(f"checkpointing must be True or False, got {checkpointing!r}")
    if not isinstance(offload, bool):
        raise ValueError(f"offload must be True or False, got {offload!r}")
    prec = _precision(precision)
    t = config.text
    if t.n_routed_experts % mesh.ep:
        raise ValueError(f"Mesh.ep ({mesh.ep}) must divide n_routed_experts ({t.n_routed_experts})")
    stages = _stage_layers(t, mesh.pp)
    specs = param_specs(config)
    plans = []
    for s, (dense, moe) in enumerate(stages):
        on = {"dense_layer": dense, "moe_layer": moe, "vision": int(s == 0), "embed": int(s == 0),
              "head": int(s == mesh.pp - 1)}
        whole = sharded = states = 0.0  # elements held whole (zero1), sharded (fsdp), optimizer-state elements
        layer_gather = {False: 0.0, True: 0.0}  # unsharded elements of one layer (FSDP all-gather unit)
        root_gather = 0.0  # the root unit (embedding, final norm, lm_head): gathered for the whole step
        elems = {"muon": 0.0, "adamw": 0.0}
        for sp in specs:
            n = on[sp.part] if sp.part in ("dense_layer", "moe_layer") else sp.count * on[sp.part]
            if n == 0:
                continue
            rows, rest = sp.shape[0], math.prod(sp.shape[1:])
            group = mesh.dp
            if sp.expert:
                rows //= mesh.ep
                group = mesh.dp // mesh.ep
            local_whole = rows * rest
            local_shard = _ceil_div(rows, group) * rest  # FSDP2 pads dim 0 to a multiple of the group
            whole += n * local_whole
            sharded += n * local_shard
            st = local_shard if mesh.sharding == "fsdp" else local_whole / group
            per_state = 1 if (optimizer == "muon" and sp.optim == "muon") else 2
            states += n * st * per_state
            elems[sp.optim] += n * st
            if sp.part in ("dense_layer", "moe_layer"):
                layer_gather[sp.part == "moe_layer"] += local_whole
            elif sp.part in ("embed", "head"):
                root_gather += n * local_whole
        held = sharded if mesh.sharding == "fsdp" else whole
        opt_shard = elems["muon"] + elems["adamw"]  # elements of this GPU's optimizer shard (= master copy)
        gather = 0.0
        if mesh.sharding == "fsdp":  # the layer being computed + the next one prefetched, and the root, unsharded
            big = max(layer_gather[False] if dense else 0.0, layer_gather[True] if moe else 0.0)
            gather = (2 * big + root_gather) * prec.param
        act = activation_bytes(config, micro_batch, seq_len, checkpointing=checkpointing, precision=prec,
                               layers=(dense, moe), head=(s == mesh.pp - 1), in_flight=mesh.pp - s,
                               attention=attention)
        plans.append(MemoryPlan(
            mesh=mesh, precision=prec.name, stage=s, params=held * prec.param, grads=held * prec.grad,
            optimizer=states * prec.state, master=opt_shard * prec.master, gather_buffers=gather,
            activations=act["stored"], recompute_peak=act["recompute_peak"],
            elems={"held": held, "optimizer_shard": opt_shard, **elems}, offload=offload))
    worst = max(plans, key=lambda p: p.total)
    worst.by_stage = [p.total for p in plans]
    return worst


# --------------------------------------------------------------------------------------------
# Search over meshes, and serving
# --------------------------------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_plans(config: ModelConfig, gpus: int, *, shardings: tuple[str, ...] = SHARDINGS,
                    pps: tuple[int, ...] | None = None, precision: str | Precision = "bf16", micro_batch: int = 1,
                    seq_len: int = 4096, optimizer: str = "muon", offload: bool = False
                    ) -> list[tuple[MemoryPlan, bool]]:
    """Every (plan, checkpointing) for ``gpus`` GPUs: ``fsdp`` with ``pp = 1`` and ``zero1`` with ``pp`` in ``pps``
    (default 8 and 16, K2 used 16), ``ep`` over the divisors of ``dp`` that divide ``n_routed_experts``."""
    _pos_int("gpus", gpus)
    bad = set(shardings) - set(SHARDINGS)
    if bad:
        raise ValueError(f"shardings must be among {SHARDINGS}, got {sorted(bad)}")
    out = []
    E = config.text.n_routed_experts
    for sharding in shardings:
        for pp in ((1,) if sharding == "fsdp" else (pps or (8, 16))):
            if gpus % pp or pp > config.text.num_hidden_layers:
                continue
            dp = gpus // pp
            for ep in _divisors(dp):
                if E % ep:
                    continue
                mesh = Mesh(dp=dp, ep=ep, pp=pp, sharding=sharding)
                for ck in (False, True):
                    out.append((plan_memory(config, mesh, precision=precision, micro_batch=micro_batch,
                                            seq_len=seq_len, checkpointing=ck, optimizer=optimizer,
                                            offload=offload), ck))
    return out


def best_plan(config: ModelConfig, gpus: int, gpu_mem_gib: float, *, sharding: str = "fsdp", reserve: float = 0.1,
              **kw) -> tuple[MemoryPlan, bool] | None:
    """The plan to pick on ``gpus`` GPUs of ``gpu_mem_gib``: one that fits without checkpointing if any (no
    recompute), else with it, else with the optimizer state offloaded to the host (K2 §2.4.2); among those the
    smallest total. None if nothing fits. ``kw``: as :func:`candidate_plans`."""
    if not (isinstance(gpu_mem_gib, (int, float)) and gpu_mem_gib > 0):
        raise ValueError(f"gpu_mem_gib must be a number > 0, got {gpu_mem_gib!r}")
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    kw.pop("offload", None)
    for offload in (False, True):
        cands = candidate_plans(config, gpus, shardings=(sharding,), offload=offload, **kw)
        for ck in (False, True):
            fit = [(p, c) for p, c in cands if c == ck and p.fits(gpu_mem_gib, reserve)]
            if fit:
                return min(fit, key=lambda pc: pc[0].total)
    return None


def smallest_plan(config: ModelConfig, gpus: int, *, sharding: str = "fsdp", **kw) -> tuple[MemoryPlan, bool]:
    """The candidate with the smallest total (checkpointing allowed), whether or not it fits."""
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    cands = candidate_plans(config, gpus, shardings=(sharding,), **kw)
    if not cands:
        raise ValueError(f"no mesh of {gpus} GPUs for sharding={sharding!r}")
    return min(cands, key=lambda pc: pc[0].total)


def serving_plan(config: ModelConfig, gpus: int, gpu_mem_gib: float, context: int, *, weight_bytes: int = 2,
                 kv_bytes: int = 2, reserve: float = 0.1) -> dict[str, float]:
    """Inference on ``gpus`` GPUs with expert parallelism over all of them (``ep = gpus``; other weights
    replicated): weights per GPU, MLA KV cache per sequence of ``context`` tokens, and how many such sequences fit
    per GPU. Sizes in bytes."""
    _pos_int("gpus", gpus)
    _pos_int("context", context)
    if not (isinstance(gpu_mem_gib, (int, float)) and gpu_mem_gib > 0):
        raise ValueError(f"gpu_mem_gib must be a number > 0, got {gpu_mem_gib!r}")
    if config.text.n_routed_experts % gpus and gpus % config.text.n_routed_experts:
        raise ValueError(f"gpus ({gpus}) and n_routed_experts ({config.text.n_routed_experts}) must divide one another")
    expert = sum(s.numel * s.count for s in param_specs(config) if s.expert)
    other = sum(s.numel * s.count for s in param_specs(config) if not s.expert)
    weights = (other + expert / min(gpus, config.text.n_routed_experts)) * weight_bytes
    kv = kv_cache_bytes(config, 1, context, kv_bytes)
    free = gpu_mem_gib * GIB * (1 - reserve) - weights
    return {"weights": weights, "kv_per_sequence": kv, "sequences": max(0.0, free / kv)}
