"""The scaffold module: a host module and a seed blended by a 0-dim `alpha` buffer.

Additive seeds (delta, residual): `y = h + alpha·s` (one `addcmul`), the host at its full gradient;
replacement seeds: `y = lerp(h, s, alpha)`. One op over the activations, the same graph whatever the
lifecycle state: `alpha` changes only at boundaries (`fill_` under `no_grad`) or on-device by a
safety breaker, so a compiled graph never sees a Python float change. Nothing here sanitises
activations: the breakers guard the seed's parameters and gradients at each optimiser step
(`kasmina_worker.measure.breakers`), so the safety costs O(seed parameters) per step. A frozen host
(policy `host_mode: frozen`) is its own parameters' `requires_grad`, never a detach in the blend, so
the layers upstream always get the gradient of the function the site computes.

Checkpoints any loader reads: the scaffold's `state_dict` holds only the host's entries, under the
site's own names (`c_attn.weight`, not `c_attn.host.weight`); the seed's tensors and alpha belong
to the worker's state (`KasminaWorker.state_dict`). Loading fills absent seed and alpha entries with
their current values, so a strict load of the plain model's state into a scaffolded model works;
entries under `host.` / `seed.` (checkpoints written before this rule) load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import torch
from torch import nn

__all__ = ["Scaffold", "SiteTensors"]

log = structlog.get_logger("kasmina")


@dataclass(frozen=True, slots=True)
class SiteTensors:
    """What one forward computed at a scaffold site, for the teaching terms: the host's output and
    the seed's as a replacement of it (`h.detach() + s` for an additive seed)."""

    host_out: torch.Tensor
    seed_out: torch.Tensor


class Scaffold(nn.Module):
    """A deployed seed at the place of its host module."""

    def __init__(self, host: nn.Module, seed: nn.Module, scaffold_id: str) -> None:
        super().__init__()
        self.host = host
        self.seed = seed
        self.scaffold_id = scaffold_id
        device = next((p.device for p in host.parameters()), torch.device("cpu"))
        self.register_buffer("alpha", torch.zeros((), dtype=torch.float32, device=device))
        self.additive = bool(getattr(seed, "additive", False))
        # Set at boundaries only, when a teaching loss needs the site tensors of the step.
        self.record_site = False
        self.site: SiteTensors | None = None
        # Warned once: trainers and EMA helpers call state_dict() every step.
        self.state_dict_warned = False
        self.register_state_dict_post_hook(_host_entries_only)
        self.register_load_state_dict_pre_hook(_load_into_host)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.host(x, *args, **kwargs)
        s = self.seed(x, h, self.host)
        # The fp32 0-dim alpha needs no cast: a 0-dim tensor does not promote a bf16/fp16 blend, and
        # addcmul / lerp round it to the blend's dtype exactly as a cast would (the fold uses that value).
        # Autograd saves only alpha for them (it needs no gradient) and passes the additive host
        # gradient through without an op.
        y = torch.addcmul(h, s, self.alpha) if self.additive else torch.lerp(h, s, self.alpha)
        if self.record_site:
            self.site = SiteTensors(h, h.detach() + s if self.additive else s)
        return y

    def extra_repr(self) -> str:
        return f"scaffold_id={self.scaffold_id!r}"


def _host_entries_only(module: Scaffold, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """`state_dict` post hook: the host's entries move to the site's own names, the seed's and alpha
    leave (the worker's state has them); version metadata follows the host's."""
    host = prefix + "host."
    for key in [k for k in state_dict if k.startswith(prefix)]:
        value = state_dict.pop(key)
        if key.startswith(host):
            state_dict[prefix + key[len(host) :]] = value
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k.startswith(prefix + "host") or k.startswith(prefix + "seed")]:
            value = metadata.pop(key)
            if key == prefix + "host":
                metadata[prefix[:-1]] = value
            elif key.startswith(host):
                metadata[prefix + key[len(host) :]] = value
    if not module.state_dict_warned:
        module.state_dict_warned = True
        log.warning(
            "live_scaffold_not_in_state_dict",
            scaffold_id=module.scaffold_id,
            site=prefix[:-1],
            hint="the host's weights only; the seed is in KasminaWorker.state_dict() (warned once per scaffold)",
        )


def _load_into_host(
    module: Scaffold, state_dict: dict, prefix: str, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    """`load_state_dict` pre hook: entries under the site's own name load into the host; absent seed
    and alpha entries keep their current values (the worker restores them from its own state)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        if rest != "alpha" and not rest.startswith(("host.", "seed.")):
            state_dict[prefix + "host." + rest] = state_dict.pop(key)
    for name, value in module.seed.state_dict(prefix=prefix + "seed.", keep_vars=True).items():
        state_dict.setdefault(name, value)
    state_dict.setdefault(prefix + "alpha", module.alpha)
