"""autoresearch pretraining script: one GPU, one file, a fixed 5-minute budget (run: uv run train.py).
The coding agent edits this file; prepare.py (data, tokenizer, evaluation) stays frozen.
Ends with a summary block whose val_bpb (bits per byte on the pinned validation shard) is the score."""

import gc
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

# prepare.py first: it refuses arguments and sets the allocator and compile-cache variables before torch loads
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb
from prepare import (cache_compiled_graphs, check_batch, or_exit, out_of_memory, peak_memory_mb, preflight,
                     print_progress, save_checkpoint, setup_device)

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

# -----------------------------------------------------------------------------
# GPT model

@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4
    n_kv_head: int = 4
    n_embd: int = 512
    window_pattern: str = "SSSL"

def norm(x):
    return F.rms_norm(x, (x.size(-1),))

def has_ve(layer_idx, n_layer):
    """Value embeddings on every other layer, always including the last."""
    return layer_idx % 2 == (n_layer - 1) % 2

def apply_rotary_emb(x, cos, sin):
    d = x.size(3) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=3)

class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        assert config.n_embd % config.n_head == 0 and config.n_head % config.n_kv_head == 0
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.ve_gate_channels = 32
        self.ve_gate = (nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False)
                        if has_ve(layer_idx, config.n_layer) else None)

    def forward(self, x, ve, cos_sin, window):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value embedding mixed in through a per-head gate in (0, 2), 1.0 at init
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim).to(v.dtype)
        # QK norm, then rotary: a rotation keeps each pair's length, so the order changes only the rounding,
        # and this one's backward is faster (q and k: 1.21 ms instead of 1.86 per layer and micro step, H200)
        q, k = norm(q), norm(k)
        q, k = apply_rotary_emb(q, *cos_sin), apply_rotary_emb(k, *cos_sin)
        y = attention(q, k, v, window)  # the back-end chosen in the section after the model
        return self.c_proj(y.contiguous().view(B, T, -1))

class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())

class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window):
        x = x + self.attn(norm(x), ve, cos_sin, window)
        return x + self.mlp(norm(x))

class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        pattern = config.window_pattern.upper()
        assert pattern and set(pattern) <= {"S", "L"}, f"bad window pattern {config.window_pattern!r}"
        long_window, short_window = config.sequence_len, config.sequence_len // 2
        self.window_sizes = [long_window if pattern[i % len(pattern)] == "L" else short_window
                             for i in range(config.n_layer)]
        self.window_sizes[-1] = long_window  # the last layer always sees the full context
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        kv_dim = config.n_kv_head * (config.n_embd // config.n_head)
        self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(config.vocab_size, kv_dim)
                                           for i in range(config.n_layer) if has_ve(i, config.n_layer)})
        cos, sin = self._precompute_rotary_embeddings()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _precompute_rotary_embeddings(self, device=None, base=10000):
        seq_len, head_dim = self.config.sequence_len, self.config.n_embd // self.config.n_head
        channels = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
        inv_freq = 1.0 / (base ** (channels / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
        return freqs.cos().bfloat16()[None, :, None, :], freqs.sin().bfloat16()[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        """Initialise after materialising from the meta device (main() builds the model there)."""
        c = self.config
        bound = (3 / c.n_embd) ** 0.5  # uniform with the std of normal(0, 1/sqrt(width))
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate = 2 * sigmoid(0) = 1
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        device = self.transformer.wte.weight.device
        self.cos, self.sin = self._precompute_rotary_embeddings(device)
        if device.type == "cuda":  # embeddings in bf16: half the memory traffic of the big lookups
            for emb in (self.transformer.wte, *self.value_embeds.values()):
                emb.to(dtype=torch.bfloat16)
        if fa3 is None and cudnn_attention is None:  # build the window masks now, outside torch.compile
            for w in set(self.window_sizes):
                if w < c.sequence_len - 1:
                    window_mask(w, c.sequence_len, device, device.type == "cuda")

    def estimate_flops(self):
        """Training FLOPs per token: 6 per matmul weight (not the lookups, not the scalars) plus attention's
        12 * heads * head_dim * context."""
        c, counts = self.config, self.num_scaling_params()
        h, q, t = c.n_head, c.n_embd // c.n_head, c.sequence_len
        attn_flops = sum(12 * h * q * min(w, t) for w in self.window_sizes)
        return 6 * (counts["lm_head"] + counts["transformer_matrices"]) + attn_flops

    def num_scaling_params(self):
        counts = dict(
            wte=self.transformer.wte.weight.numel(),
            value_embeds=sum(p.numel() for p in self.value_embeds.parameters()),
            lm_head=self.lm_head.weight.numel(),
            transformer_matrices=sum(p.numel() for p in self.transformer.h.parameters()),
            scalars=self.resid_lambdas.numel() + self.x0_lambdas.numel(),
        )
        counts["total"] = sum(counts.values())
        assert counts["total"] == sum(p.numel() for p in self.parameters())
        return counts

    def setup_optimizer(self, unembedding_lr, embedding_lr, matrix_lr, weight_decay, adam_betas, scalar_lr):
        s = (self.config.n_embd / 768) ** -0.5  # AdamW learning rates were tuned at width 768
        matrix_params = list(self.transformer.h.parameters())
        adamw = dict(kind="adamw", betas=adam_betas, eps=1e-10, weight_decay=0.0)
        param_groups = [
            dict(adamw, params=list(self.lm_head.parameters()), lr=unembedding_lr * s),
            dict(adamw, params=list(self.transformer.wte.parameters()), lr=embedding_lr * s),
            dict(adamw, params=list(self.value_embeds.parameters()), lr=embedding_lr * s),
            dict(adamw, params=[self.resid_lambdas], lr=scalar_lr * 0.01),
            dict(adamw, params=[self.x0_lambdas], lr=scalar_lr, betas=(0.96, 0.95)),
        ]
        for shape in sorted({p.shape for p in matrix_params}):
            param_groups.append(dict(kind="muon", params=[p for p in matrix_params if p.shape == shape],
                                     lr=matrix_lr, momentum=0.95, ns_steps=5, beta2=0.95,
                                     weight_decay=weight_decay))
        assert sum(len(g["params"]) for g in param_groups) == len(list(self.parameters()))
        optimizer = MuonAdamW([g for g in param_groups if g["params"]])
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return optimizer

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.size()
        assert T <= self.cos.size(1), f"sequence length {T} > the rotary tables' {self.cos.size(1)}"
        cos_sin = self.cos[:, :T], self.sin[:, :T]
        x = norm(self.transformer.wte(idx))
        x0 = x
        for i, block in enumerate(self.transformer.h):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.window_sizes[i])
        x = norm(x)
        softcap = 15
        logits = self.lm_head(x)
        if targets is None:
            return softcap * torch.tanh(logits.float() / softcap)
        losses = SoftcapCrossEntropy.apply(logits.view(-1, logits.size(-1)), targets.view(-1), softcap)
        if reduction == "none":
            return losses
        return losses.sum() / ((targets != -1).sum() if reduction == "mean" else 1)

class SoftcapCrossEntropy(torch.autograd.Function):
    """Per-token cross entropy (0 where the target is -1) of softcap * tanh(logits / softcap), in fp32: the
    same math as F.cross_entropy on the capped logits, but it keeps only the bf16 logits and each row's
    log-sum-exp and recomputes the rest in backward, instead of writing and reading back fp32 logits: its
    kernels take 11.8 ms a step instead of autograd's 22.5 (H100, profiled)."""

    @staticmethod
    def forward(ctx, logits, targets, softcap):
        assert softcap <= 80, "the log-sum-exp below needs vocab_size * exp(softcap) to fit in fp32"
        capped = softcap * torch.tanh(logits.float() / softcap)
        lse = capped.exp().sum(dim=-1).log()  # |capped| <= softcap: no max to subtract, so a single pass
        valid = targets != -1
        picked = capped.gather(1, torch.where(valid, targets, 0)[:, None])[:, 0]
        ctx.save_for_backward(logits, targets, lse)
        ctx.softcap = softcap
        return torch.where(valid, lse - picked, 0.0)

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors
        t = torch.tanh(logits.float() / ctx.softcap)
        onehot = torch.arange(logits.size(-1), device=logits.device) == targets[:, None]
        grad = torch.where(targets != -1, grad, 0.0)[:, None]
        dlogits = (torch.exp(ctx.softcap * t - lse[:, None]) - onehot.float()) * grad * (1 - t * t)
        return dlogits.to(logits.dtype), None, None

# -----------------------------------------------------------------------------
# Attention back-end, for the model's attention(): FA3 from the kernels hub; else cuDNN's sliding window
# (nvidia-cudnn-frontend), else flex_attention, for the windowed layers; all with FA3's window semantics.

# Tried in order: kernels-community/flash-attn3 has builds for torch 2.11 (v1: stable-ABI builds for any torch
# >= 2.9; main: one per torch version); varunneal's, the original's pick for Hopper, showed none for 2.11.
FA3_CANDIDATES = [("kernels-community/flash-attn3", dict(version=1)),
                  ("kernels-community/flash-attn3", dict(revision="main")),
                  ("varunneal/flash-attention-3", dict(revision="main", trust_remote_code=True))]
# cuDNN is the fastest causal SDPA on H100 (1.37 ms vs flash 2.32 ms at this model's shapes)
SDPA_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH]
_window_masks = {}

def short_error(e):
    return " ".join(f"{type(e).__name__}: {e}".split())[:160]

def load_fa3():
    """FA3's flash_attn_func from the first candidate that has a build for this torch and GPU, else None and
    why. A network error ends the search: the other candidates live on the same hub."""
    try:
        from kernels import get_kernel
    except ImportError as e:
        return None, short_error(e)
    reasons = []
    for repo, how in FA3_CANDIDATES:
        try:  # downloads and imports compiled code from the hub repo named here; the start-up line prints it
            kernel = get_kernel(repo, **how)
            return getattr(kernel, "flash_attn_interface", kernel).flash_attn_func, f"{repo} {how}"
        except Exception as e:
            reasons.append(f"{repo}: {short_error(e)}")
            if not (isinstance(e, FileNotFoundError) or "not found" in str(e)):
                break  # not "no build (or no such version) for this system": the hub is unreachable
    return None, "; ".join(reasons)

def check_window_attention(fn, device, T=128, window=16, D=128):
    """None if fn (cuDNN's call convention) computes FA3's window_size=(window, 0), forward and backward, on a
    tiny random problem, against masked SDPA in fp32; else what went wrong. On the H200 the right bound errs
    by 0.2-0.3 % (bf16 rounding), a window one key off by 21-26 %: 2 % separates them."""
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v, dy = (torch.randn(1, 2, T, D, generator=gen, device=device) for _ in range(4))
        q, k, v = (t.bfloat16().requires_grad_() for t in (q, k, v))
        y = fn(q, k, v, is_causal=True, left_bound=window + 1, right_bound=0)
        grads = torch.autograd.grad(y, (q, k, v), dy.bfloat16())
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        y_ref = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=window_mask(window, T, device, False))
        grads_ref = torch.autograd.grad(y_ref, (q32, k32, v32), dy)
        for name, a, b in zip(("output", "dq", "dk", "dv"), (y, *grads), (y_ref, *grads_ref)):
            err = ((a.float() - b).norm() / b.norm()).item()
            if not err < 0.02:  # also catches NaN
                return f"{name} differs from the reference by {100 * err:.1f} %"
        return None
    except Exception as e:  # no package, no cuDNN build for this GPU, an unsupported shape
        return short_error(e)

def window_mask(window, T, device, flex):
    """Sliding-window causal mask, built once per (window, T, device): key j is visible to query i iff
    i - window <= j <= i. A flex BlockMask (CUDA) or a boolean (T, T) tensor (SDPA elsewhere)."""
    key = (window, T, str(device), flex)
    if key not in _window_masks:
        if flex:
            def mask_mod(b, h, q_idx, kv_idx):
                return (kv_idx <= q_idx) & (q_idx - kv_idx <= window)
            _window_masks[key] = create_block_mask(mask_mod, None, None, T, T, device=device)
        else:
            i = torch.arange(T, device=device)
            _window_masks[key] = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] <= window)
    return _window_masks[key]

def attention(q, k, v, window, use_flex=None):
    """Causal attention with a left window, FA3's window_size=(window, 0): each query sees itself and
    the `window` keys before it. q: (B, T, H, D); k, v: (B, T, Hkv, D) with H a multiple of Hkv."""
    if fa3 is not None:
        y = fa3(q, k, v, causal=True, window_size=(window, 0))
        return y[0] if isinstance(y, tuple) else y  # some builds also return the log-sum-exp
    T = q.size(1)
    use_flex = q.is_cuda if use_flex is None else use_flex
    gqa = k.size(2) != q.size(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # SDPA and flex take (B, H, T, D)
    if window >= T - 1:  # the window covers the whole causal context
        with sdpa_kernel(SDPA_BACKENDS, set_priority=True) if q.is_cuda else nullcontext():
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif cudnn_attention is not None:  # cuDNN's left bound counts the query itself: FA3's window + 1
        y = cudnn_attention(q, k, v, is_causal=True, left_bound=window + 1, right_bound=0, enable_gqa=gqa)
    elif use_flex:
        y = flex_attention(q, k, v, block_mask=window_mask(window, T, q.device, True), enable_gqa=gqa)
    else:
        mask = window_mask(window, T, q.device, False)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)

def pick_attention(device):
    """(fa3, cudnn_attention, start-up line) on CUDA: FA3 if it loads; cuDNN's window if its check passes, or
    flex (None): for windowed layers without FA3, and audit.py's export (FA3's operators are not torch's)."""
    fa3, fa3_note = load_fa3()
    try:
        from cudnn.experimental.ops import scaled_dot_product_attention as cudnn_sdpa
        note = check_window_attention(cudnn_sdpa, device)
    except Exception as e:  # not installed (not on Linux), or it fails to load (an old driver)
        note = short_error(e)
    if fa3 is not None:
        return fa3, (cudnn_sdpa if note is None else None), f"attention: FA3 ({fa3_note})"
    windowed = ("cuDNN sliding window (nvidia-cudnn-frontend)" if note is None
                else f"flex_attention; cuDNN sliding window unavailable: {note}")
    line = (f"attention: PyTorch fallback (SDPA cuDNN for full layers, {windowed} for windowed layers); "
            f"FA3 unavailable: {fa3_note}")
    return None, (cudnn_sdpa if note is None else None), line

fa3, cudnn_attention, ATTENTION_BACKEND = (
    pick_attention(torch.device("cuda")) if torch.cuda.is_available() else
    (None, None, "attention: PyTorch SDPA (no CUDA, so no FA3; causal for full layers, boolean mask for "
                 "windowed layers)"))

# -----------------------------------------------------------------------------
# Optimizer: AdamW for embeddings, head and scalars; Muon (NorMuon variant) for the block matrices

POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]

def adamw_update(p, grad, exp_avg, exp_avg_sq, step_t, lr_t, beta1_t, beta2_t, eps_t, wd_t):
    p.mul_(1 - lr_t * wd_t)
    exp_avg.lerp_(grad, 1 - beta1_t)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2_t)
    bias1, bias2 = 1 - beta1_t ** step_t, 1 - beta2_t ** step_t
    p.sub_((lr_t / bias1) * exp_avg / ((exp_avg_sq / bias2).sqrt() + eps_t))

def polar_express(g, steps=5, dtype=torch.bfloat16):
    """Approximately orthogonalise each matrix of g (..., rows, cols): all singular values near 1."""
    X = g.to(dtype)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        if X.size(-2) > X.size(-1):  # work with the smaller Gram matrix
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    return X

def muon_update(grads, params, momentum_buf, second_buf, momentum_t, lr_t, wd_t, beta2_t, ns_steps: int,
                red_dim: int):
    """One Muon step on a stack of same-shape matrices (N, rows, cols)."""
    mu = momentum_t.to(grads.dtype)
    momentum_buf.lerp_(grads, 1 - mu)
    g = grads.lerp_(momentum_buf, mu)  # Nesterov
    # bf16 on GPUs; fp32 on CPUs, where bf16 matmuls are emulated and ~20x slower
    X = polar_express(g, ns_steps, torch.float32 if g.device.type == "cpu" else torch.bfloat16).float()
    # NorMuon: per-row (or per-column) second moment evens out the update, then restore the Frobenius norm
    v = X.square().mean(dim=red_dim, keepdim=True)
    second_buf.lerp_(v.to(second_buf.dtype), 1 - beta2_t.to(second_buf.dtype))
    step = second_buf.clamp_min(1e-10).rsqrt().float()
    n = X.size(red_dim)
    norm_before = (v.sum(dim=(-2, -1), keepdim=True) * n).sqrt()
    norm_after = ((v * step.square()).sum(dim=(-2, -1), keepdim=True) * n).sqrt()
    X = X * (step * norm_before / norm_after.clamp_min(1e-10))
    # Cautious weight decay: only where the update and the weight agree in sign
    lr, wd = lr_t.to(params.dtype), wd_t.to(params.dtype)
    mask = (X * params) >= 0
    params.sub_(lr * X + lr * wd * params * mask)

if torch.cuda.is_available():  # compiled once; the changing scalars come as 0-d tensors: no recompiles
    adamw_step = torch.compile(adamw_update, dynamic=False, fullgraph=True)
    muon_step = torch.compile(muon_update, dynamic=False, fullgraph=True)
else:  # CPU / MPS: the same math, eager
    adamw_step, muon_step = adamw_update, muon_update

class MuonAdamW(torch.optim.Optimizer):
    """Param groups carry kind='adamw' (lr, betas, eps, weight_decay) or kind='muon' (lr, momentum,
    ns_steps, beta2, weight_decay); a Muon group holds matrices of one shape."""

    def __init__(self, param_groups):
        super().__init__(param_groups, defaults={})
        device = self.param_groups[0]["params"][0].device
        # 0-d scalars live on the CPU for the compiled CUDA path; eager non-CPU devices want them local
        scalar_device = device if device.type not in ("cpu", "cuda") else torch.device("cpu")
        self._t = {name: torch.tensor(0.0, dtype=torch.float32, device=scalar_device)
                   for name in ("step", "lr", "beta1", "beta2", "eps", "wd", "momentum")}

    def _set(self, **values):
        for name, value in values.items():
            self._t[name].fill_(value)
        return self._t

    def _step_adamw(self, group):
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            t = self._set(step=state["step"], lr=group["lr"], beta1=group["betas"][0],
                          beta2=group["betas"][1], eps=group["eps"], wd=group["weight_decay"])
            adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                       t["step"], t["lr"], t["beta1"], t["beta2"], t["eps"], t["wd"])

    def _step_muon(self, group):
        params = group["params"]
        (rows, cols), n = params[0].shape, len(params)
        red_dim = -1 if rows >= cols else -2  # NorMuon's statistics: per row of tall, per column of wide
        state = self.state[params[0]]  # one state per group: row i of each buffer belongs to params[i]
        if not state:
            zeros = params[0].new_zeros
            state["momentum_buffer"] = zeros(n, rows, cols)
            state["second_momentum_buffer"] = zeros((n, rows, 1) if rows >= cols else (n, 1, cols))
        momentum_buf, second_buf = state["momentum_buffer"], state["second_momentum_buffer"]
        have = [i for i, p in enumerate(params) if p.grad is not None]
        if not have:
            return
        if len(have) < n:  # a parameter without a gradient is not updated, nor are its buffer rows
            params = [params[i] for i in have]
            momentum_buf, second_buf = momentum_buf[have], second_buf[have]  # copies, written back below
        grads, stacked = torch.stack([p.grad for p in params]), torch.stack(params)
        t = self._set(momentum=group["momentum"], lr=group["lr"] * max(1.0, rows / cols) ** 0.5,
                      wd=group["weight_decay"], beta2=group["beta2"])
        muon_step(grads, stacked, momentum_buf, second_buf,
                  t["momentum"], t["lr"], t["wd"], t["beta2"], group["ns_steps"], red_dim)
        torch._foreach_copy_(params, list(stacked.unbind(0)))
        if len(have) < n:
            state["momentum_buffer"][have], state["second_momentum_buffer"][have] = momentum_buf, second_buf

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                self._step_adamw(group)
            elif group["kind"] == "muon":
                self._step_muon(group)
            else:
                raise ValueError(f"unknown param group kind {group['kind']!r}")

# -----------------------------------------------------------------------------
# Hyperparameters (edit these directly; there are no command-line flags)

# Model architecture
ASPECT_RATIO = 64           # model width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128              # attention head dimension
WINDOW_PATTERN = "SSSL"     # per layer, repeating: S = half context, L = full context (last layer always L)

# Optimization
TOTAL_BATCH_SIZE = 2**19    # tokens per optimizer step
EMBEDDING_LR = 0.6          # token and value embeddings (AdamW)
UNEMBEDDING_LR = 0.004      # lm_head (AdamW)
MATRIX_LR = 0.04            # block matrices (Muon)
SCALAR_LR = 0.5             # per-layer lambdas (AdamW)
WEIGHT_DECAY = 0.2          # Muon's cautious weight decay, decayed to 0 with progress
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0          # fraction of the time budget spent warming the LR up
WARMDOWN_RATIO = 0.5        # fraction of the time budget at the end spent decaying the LR
FINAL_LR_FRAC = 0.0         # LR multiplier reached at the end of warmdown

# Model size and memory
DEPTH = 8                   # number of transformer layers
DEVICE_BATCH_SIZE = 128     # sequences per micro step (lower it if out of memory)
SEED = 42                   # weight init; program.md changes it (to 43) only to measure run-to-run noise

# Schedules, over progress = training time / TIME_BUDGET
def get_lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1 - cooldown) * FINAL_LR_FRAC

def get_muon_momentum(step):
    frac = min(step / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95

def get_weight_decay(progress):
    return WEIGHT_DECAY * (1 - progress)

def main():
    t_start = time.time()
    device, autocast_ctx, sync, peak_flops = setup_device(SEED)
    use_cuda = device.type == "cuda"
    print(ATTENTION_BACKEND)
    if DEPTH < 1:  # no layers: GPT would fail deep inside, with an IndexError
        sys.exit(f"DEPTH = {DEPTH} in train.py: DEPTH must be at least 1 (a layer).")
    grad_accum_steps = check_batch(TOTAL_BATCH_SIZE, DEVICE_BATCH_SIZE)
    tokenizer = or_exit(Tokenizer.from_directory)
    vocab_size = tokenizer.get_vocab_size()
    print(f"Vocab size: {vocab_size:,}")
    model_dim = ((DEPTH * ASPECT_RATIO + HEAD_DIM - 1) // HEAD_DIM) * HEAD_DIM
    num_heads = model_dim // HEAD_DIM
    config = GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=vocab_size, n_layer=DEPTH, n_head=num_heads,
                       n_kv_head=num_heads, n_embd=model_dim, window_pattern=WINDOW_PATTERN)
    print(f"model config: {asdict(config)}")
    with torch.device("meta"):  # no memory or init work until the checks below pass
        model = GPT(config)
    num_params, num_flops_per_token = model.num_scaling_params()["total"], model.estimate_flops()
    # The model's size in plain numbers: all the harness reads of it (no edit of the model can crash it)
    model_size = dict(num_params=num_params, flops_per_token=num_flops_per_token, depth=DEPTH,
                      width=model_dim, vocab_size=config.vocab_size)
    preflight(tokenizer, DEVICE_BATCH_SIZE, TOTAL_BATCH_SIZE, **model_size)  # vocabulary, memory, time, disk
    # every shard checked now, the validation one included; it packs batches while the model is built
    train_loader = or_exit(make_dataloader, tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")
    model.to_empty(device=device)
    model.init_weights()
    print("parameter counts:")
    for key, value in model.num_scaling_params().items():
        print(f"  {key:24s}: {value:,}")
    flops_per_step = num_flops_per_token * TOTAL_BATCH_SIZE
    print(f"estimated FLOPs per token: {num_flops_per_token:e}")
    print(f"Scaling AdamW LRs by 1/sqrt({model_dim}/768) = {(model_dim / 768) ** -0.5:.6f}")
    optimizer = model.setup_optimizer(unembedding_lr=UNEMBEDDING_LR, embedding_lr=EMBEDDING_LR,
                                      matrix_lr=MATRIX_LR, weight_decay=WEIGHT_DECAY, adam_betas=ADAM_BETAS,
                                      scalar_lr=SCALAR_LR)
    raw_model = model
    if use_cuda:
        cache_compiled_graphs()  # warm starts load every graph from torch.compile's cache
        model = torch.compile(model, dynamic=False)

    x, y, epoch = next(train_loader)
    print(f"Time budget: {TIME_BUDGET}s")
    print(f"Gradient accumulation steps: {grad_accum_steps}")

    # -------------------------------------------------------------------------
    # Training loop: steps 0..10 (compilation, warm-up) are not counted in the time budget

    t_start_training = time.time()
    smooth_train_loss = total_training_time = step0_seconds = 0.0
    step = timed_steps = 0
    try:
        while True:
            sync()
            t0 = time.time()
            for micro_step in range(grad_accum_steps):
                with autocast_ctx:  # per-token losses, averaged outside: the evaluation reuses this graph
                    loss = model(x, y, reduction="none").mean()
                train_loss = loss.detach()
                (loss / grad_accum_steps).backward()
                x, y, epoch = next(train_loader)  # the host packs the next batch while the GPU works
            progress = min(total_training_time / TIME_BUDGET, 1.0)
            lrm = get_lr_multiplier(progress)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lrm
                if group["kind"] == "muon":
                    group.update(momentum=get_muon_momentum(step), weight_decay=get_weight_decay(progress))
            optimizer.step()
            model.zero_grad(set_to_none=True)
            sync()
            dt = time.time() - t0
            train_loss_f = train_loss.item()  # one host read per step, after the sync: costs nothing extra
            if math.isnan(train_loss_f) or train_loss_f > 100:
                print(f"\nFAIL: training loss is {train_loss_f} at step {step}")
                sys.exit(1)
            if step == 0:
                step0_seconds = dt
            if step > 10:
                total_training_time += dt
                timed_steps += 1
            ema_beta = 0.9
            smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * train_loss_f
            debiased_loss = smooth_train_loss / (1 - ema_beta ** (step + 1))
            mfu = f"{100 * flops_per_step / dt / peak_flops:.1f}%" if peak_flops else "n/a"
            remaining = max(0.0, TIME_BUDGET - total_training_time)
            line = (f"step {step:05d} ({100 * progress:.1f}%) | loss: {debiased_loss:.6f} | lrm: {lrm:.2f} | "
                    f"dt: {dt * 1000:.0f}ms | tok/sec: {int(TOTAL_BATCH_SIZE / dt):,} | mfu: {mfu} | "
                    f"epoch: {epoch} | remaining: {remaining:.0f}s")
            print_progress(line, step, last=total_training_time >= TIME_BUDGET)

            # The collector's pauses cost ~500 ms each; nothing here makes reference cycles worth chasing
            if step == 0:
                gc.collect()
                gc.freeze()
                gc.disable()
            elif (step + 1) % 5000 == 0:
                gc.collect()
            step += 1
            if step > 10 and total_training_time >= TIME_BUDGET:
                break
    except Exception as e:  # running out of memory gets a plain answer; anything else propagates as usual
        out_of_memory(e, DEVICE_BATCH_SIZE, TOTAL_BATCH_SIZE, **model_size)
    train_loader.close()  # stop its packing thread before saving and evaluating

    # -------------------------------------------------------------------------
    # Save the weights (a failed evaluation must not lose the run), evaluate, summarise

    save_checkpoint(raw_model)
    t_eval = time.time()
    model.eval()
    with autocast_ctx:  # evaluate_bpb scores the logits of model(x) itself
        val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)
    t_end = time.time()

    steady_state_mfu = (100 * flops_per_step * timed_steps / total_training_time / peak_flops
                        if peak_flops and total_training_time > 0 else 0.0)
    print(f"timing: startup {t_start_training - t_start:.1f}s, step 0{' (torch.compile)' if use_cuda else ''}"
          f" {step0_seconds:.1f}s, eval {t_end - t_eval:.1f}s")
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {total_training_time:.1f}")
    print(f"total_seconds:    {t_end - t_start:.1f}")
    print(f"peak_vram_mb:     {peak_memory_mb():.1f}")
    print(f"mfu_percent:      {steady_state_mfu:.2f}")
    print(f"total_tokens_M:   {step * TOTAL_BATCH_SIZE / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {DEPTH}")

if __name__ == "__main__":
    main()
