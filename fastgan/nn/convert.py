"""fastgan.nn.convert: swap a torch.nn model's layers for fastgan's in place, keeping its state_dict.

What is matched (exact torch.nn types only: a subclass may have its own forward):
  nn.ConvTranspose2d                          -> FusedConvTranspose2d
  nn.Conv2d                                   -> FusedConv2d
  nn.LeakyReLU                                -> FusedLeakyReLU
  in an nn.Sequential, a module followed directly by an activation module (ReLU, LeakyReLU, Tanh,
  Sigmoid, ELU, SELU, SiLU, GELU(approximate='none')):
    BatchNorm2d + act                         -> FusedBatchNormAct2d(activation=act)
    InstanceNorm2d + act                      -> FusedInstanceNormAct2d(activation=act)
    Conv2d / ConvTranspose2d + act            -> the fused conv with activation=act
  and the activation's slot becomes nn.Identity, so indices and state_dict keys do not move.

The new modules adopt the old ones' Parameter and buffer objects (same device, dtype, memory
format, requires_grad; an optimizer built before the conversion still holds them) and their
hooks. Only the order inside an nn.Sequential is known without running the model, so an
activation applied in a custom forward() (F.relu(self.conv(x))) is not fused; the conv alone is
still converted.
"""
import copy
from typing import List, Optional, Tuple

from torch import nn

from .activation import FusedLeakyReLU
from .batchnorm import FusedBatchNormAct2d
from .conv import FusedConv2d, FusedConvTranspose2d
from .instancenorm import FusedInstanceNormAct2d

__all__ = ["convert"]

_SINGLE = {nn.Conv2d: FusedConv2d, nn.ConvTranspose2d: FusedConvTranspose2d, nn.LeakyReLU: FusedLeakyReLU}
_HEADS = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d)
_NORMS = {nn.BatchNorm2d: FusedBatchNormAct2d, nn.InstanceNorm2d: FusedInstanceNormAct2d}  # fused only with an act
_FASTGAN = (FusedConv2d, FusedConvTranspose2d, FusedLeakyReLU, FusedBatchNormAct2d, FusedInstanceNormAct2d)


_PLAIN_ACTS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SELU: "selu", nn.SiLU: "silu"}


def _activation(m: nn.Module) -> Tuple[Optional[str], Optional[float], str]:
    """(bias_act name, alpha, why not) of an activation module; name None if it has no fused form."""
    t = type(m)
    if t in _PLAIN_ACTS:
        return _PLAIN_ACTS[t], None, ""
    if t in (nn.LeakyReLU, FusedLeakyReLU):
        return "lrelu", float(m.negative_slope), ""
    if t is nn.ELU:
        return "elu", float(m.alpha), ""
    if t is nn.GELU:
        if m.approximate == "none":
            return "gelu", None, ""
        return None, None, f"GELU(approximate={m.approximate!r}) has no fused form"
    return None, None, ""


def _has_hooks(m: nn.Module, post_only: bool) -> bool:
    names = ["_forward_hooks", "_backward_hooks", "_backward_pre_hooks"]
    if not post_only:
        names.append("_forward_pre_hooks")
    return any(len(getattr(m, n, {}) or {}) for n in names)


def _adopt(cls, old: nn.Module, **attrs) -> nn.Module:
    """A `cls` that takes over `old`'s attributes: the same Parameter/buffer objects and hooks."""
    new = cls.__new__(cls)
    d = {}
    for k, v in old.__dict__.items():
        d[k] = copy.copy(v) if isinstance(v, (dict, set)) else v
    new.__dict__.update(d)
    for k, v in attrs.items():
        setattr(new, k, v)
    return new


def _fused_head(head: nn.Module, act: str, alpha: Optional[float]) -> nn.Module:
    t = type(head)
    if t in _NORMS:
        return _adopt(_NORMS[t], head, activation=act,
                      negative_slope=alpha if alpha is not None else 0.01, memory_efficient=True)
    cls = FusedConv2d if t is nn.Conv2d else FusedConvTranspose2d
    return _adopt(cls, head, activation=act, negative_slope=alpha if alpha is not None else 0.2, gain=1.0)


def _single(m: nn.Module) -> nn.Module:
    cls = _SINGLE[type(m)]
    if cls is FusedLeakyReLU:
        return _adopt(cls, m)
    return _adopt(cls, m, activation=None, negative_slope=0.2, gain=1.0)


def _name(m: nn.Module) -> str:
    return type(m).__name__


def _why_left(m: nn.Module, in_sequential: bool, nxt: Optional[nn.Module]) -> str:
    """Why a leaf module stays as it is (empty when there is nothing worth saying)."""
    t = type(m)
    if isinstance(m, _FASTGAN):
        return "already fastgan"
    if t in _NORMS:
        if not in_sequential:
            return "not in an nn.Sequential: an activation applied in forward() is not seen"
        return f"no activation follows it (next: {_name(nxt) if nxt is not None else 'end of Sequential'})"
    if isinstance(m, _HEADS) and t not in _HEADS:
        return f"subclass of nn.{[c for c in _HEADS if isinstance(m, c)][0].__name__} (its forward may differ)"
    act, _, why = _activation(m)
    if why:
        return why
    if act is not None:
        return "activation not directly after a Conv2d/ConvTranspose2d/BatchNorm2d/InstanceNorm2d in an nn.Sequential"
    if len(m._parameters) or len(m._buffers):
        return "no fastgan counterpart"
    return ""


def convert(module: nn.Module, *, inplace: bool = True, verbose: bool = False) -> nn.Module:
    """Replace `module`'s torch.nn layers with fastgan's fused ones; returns the converted module.

    Every state_dict key and value is kept, the Parameter objects themselves are reused, and the
    converted model computes the same function (see the module doc for what is matched). Use the
    return value: a root that is itself converted (convert(nn.Conv2d(...))) is a new object.
    inplace=False converts a deep copy. verbose=True prints what was replaced, what was fused
    with what, and what was left and why. Converting twice changes nothing.

    Convert before wrapping in DistributedDataParallel or torch.compile: DDP registers its
    parameters at construction (they are the same objects here, so it keeps working, but convert
    first to be safe), and a compiled model would recompile. Wrapped modules are walked too.
    A Sequential sliced between a fused pair (model[:k]) sees the activation applied.
    """
    if not inplace:
        module = copy.deepcopy(module)
    rows: List[Tuple[str, str, str, str]] = []  # (name, was, now, note)
    root = nn.Sequential(module)  # a parent for the root, so it can be replaced too
    _walk(root, "", rows, top=True)
    out = root[0]
    if verbose:
        print(_table(rows))
    return out


def _walk(parent: nn.Module, prefix: str, rows, top: bool = False) -> None:
    names = list(parent._modules.keys())
    seq = (isinstance(parent, nn.Sequential) and not top
           and type(parent).forward is nn.Sequential.forward)
    i = 0
    while i < len(names):
        name = names[i]
        m = parent._modules[name]
        full = f"{prefix}{name}"
        shown = "(root)" if top else full
        if m is None:
            i += 1
            continue
        nxt = parent._modules[names[i + 1]] if seq and i + 1 < len(names) else None
        t = type(m)
        if seq and t in _HEADS and nxt is not None:
            act, alpha, why = _activation(nxt)
            nfull = f"{prefix}{names[i + 1]}"
            if act is not None and not _has_hooks(m, post_only=True) and not _has_hooks(nxt, post_only=False):
                new = _fused_head(m, act, alpha)
                parent._modules[name] = new
                parent._modules[names[i + 1]] = nn.Identity()
                rows.append((f"{shown} + {nfull}", f"{_name(m)} + {_name(nxt)}",
                             f"{_name(new)}(activation={act!r})", f"fused; {nfull} -> Identity"))
                i += 2
                continue
            if act is not None:
                why = "a hook on one of the pair would see another tensor"
            if t in _NORMS:
                rows.append((shown, _name(m), "", why or _why_left(m, True, nxt)))
                i += 1
                continue
            if why:
                new = _single(m)
                parent._modules[name] = new
                rows.append((shown, _name(m), _name(new), f"replaced; not fused with {nfull}: {why}"))
                i += 1
                continue
        if t in _SINGLE:
            new = _single(m)
            parent._modules[name] = new
            note = "replaced"
            if t is not nn.LeakyReLU:
                if seq:
                    nx = _name(nxt) if nxt is not None else "end of Sequential"
                    note += f"; no activation follows (next: {nx})"
                else:
                    note += "; not in an nn.Sequential, so no activation fused"
            rows.append((shown, _name(m), _name(new), note))
        elif len(m._modules):
            _walk(m, "" if top else f"{full}.", rows)
        else:
            why = _why_left(m, seq, nxt)
            if why:
                rows.append((shown, _name(m), "", why))
        i += 1


def _table(rows) -> str:
    if not rows:
        return "fastgan.nn.convert: nothing to convert"
    head = ("module", "was", "now", "note")
    body = [(a, b, c or "(left)", d) for a, b, c, d in rows]
    w = [max(len(r[k]) for r in body + [head]) for k in range(3)]
    lines = ["  ".join(s.ljust(w[k]) if k < 3 else s for k, s in enumerate(r)).rstrip() for r in [head] + body]
    n_rep = sum(1 for r in rows if r[2] and not r[3].startswith("fused"))
    n_fus = sum(1 for r in rows if r[3].startswith("fused"))
    n_done = sum(1 for r in rows if r[3] == "already fastgan")
    n_left = sum(1 for r in rows if not r[2]) - n_done
    lines.append(f"{n_rep} replaced, {n_fus} fused pairs, {n_left} left" + (f", {n_done} already fastgan" if n_done else ""))
    return "\n".join(lines)
