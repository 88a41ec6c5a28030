"""LoraAdapters: every LoRA adapter of one base module, and the math on them.

The container hangs off the base module as its child `lora` and adds its output
through a forward hook, so the base module keeps its class and its keys
(`<path>.weight` stays `<path>.weight`). For a base weight W, adapter i adds

    y = base(x) + s_i · B_i (A_i x)        A_i: (r_i, in), B_i: (out, r_i)

Linear, transformers' Conv1D (weight stored transposed, (in, out)) and Embedding
(A_i is indexed by token id instead of multiplied) are handled. Merge folds
s_i B_i A_i into W; unmerge subtracts it again.

An adapter of a LoRA variant (DoRA) is plain LoRA plus what its variant object
(core/variants.py) adds: its own tensors, a correction on top of the LoRA output,
its merge and the exact inverse. Nothing here names a variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from adapterkit.core import placement
from adapterkit.core.kinds import ModuleKind
from adapterkit.core.pack import RankPack
from adapterkit.core.routing import AdapterRouting, Route
from adapterkit.core.variants import PLAIN_LORA, LoraVariant, variant_tensors

__all__ = ["AdapterParameters", "AdapterRouting", "LoraAdapters", "adapter_tensor_shapes", "lora_scale"]


@dataclass
class _AdapterInfo:
    rank: int
    scale: float
    dropout: float
    variant: LoraVariant = PLAIN_LORA  # what the adapter is beyond A and B (core/variants.py)


class AdapterParameters(nn.Module):
    """One factor (A or B) of every adapter at a module, by adapter name.

    A minimal ParameterDict: it stores parameters where every nn.Module does
    (`_parameters`, so state_dict keys stay `<path>.lora.lora_A.<adapter>`), without
    ParameterDict's per-insert attribute checks, which cost ~10 us each and were a
    third of a load's time with 60 adapted modules. Names are validated by the caller
    (AdapterModel refuses empty names and names with '.' or '/').
    """

    def __getitem__(self, name: str) -> nn.Parameter:
        return cast(nn.Parameter, self._parameters[name])

    def __setitem__(self, name: str, param: nn.Parameter) -> None:
        self._parameters[name] = param

    def __delitem__(self, name: str) -> None:
        del self._parameters[name]

    def __contains__(self, name: object) -> bool:
        return name in self._parameters

    def __iter__(self):
        return iter(self._parameters)

    def __len__(self) -> int:
        return len(self._parameters)

    def keys(self):
        return self._parameters.keys()

    def items(self):
        return self._parameters.items()


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def adapter_tensor_shapes(kind: ModuleKind, module: nn.Module, rank: int,
                          variant: LoraVariant = PLAIN_LORA) -> dict[str, tuple[int, ...]]:
    """The LoRA tensors an adapter has at a module, by role ("A", "B", and its variant's, e.g.
    DoRA's "M": io.keys' factor names), with their shapes. `LoraAdapters.tensors_of` holds the
    same roles; model/state.py builds an adapter's whole tensor set from these."""
    in_f, out_f = kind.features(module)
    return {"A": (rank, in_f), "B": (out_f, rank), **variant.tensor_shapes(in_f, out_f, rank)}


class LoraAdapters(nn.Module):
    def __init__(self, base: nn.Module, kind: ModuleKind, routing: AdapterRouting) -> None:
        super().__init__()
        self.kind = kind
        self.routing = routing
        self.lora_A = AdapterParameters()
        self.lora_B = AdapterParameters()
        # The variants' own tensors (DoRA's lora_magnitude_vector), one holder each, present
        # whether or not an adapter here uses it, so state_dict keys do not depend on the mix.
        for tensor in variant_tensors():
            self.add_module(tensor.attr, AdapterParameters())
        # Merged adapter -> what its variant's unmerge needs back (DoRA: the norm of the merge).
        self._merge_state: dict[str, object] = {}
        # Adapters whose variant corrects the LoRA output, kept so a mixed batch of plain adapters
        # checks one empty set, not every adapter here.
        self._correcting: set[str] = set()
        # The base module is referenced, not registered, so it is not a child of its own child.
        self.__dict__["_base"] = base
        self.in_features, self.out_features = kind.features(base)
        self.info: dict[str, _AdapterInfo] = {}
        self.merged: list[str] = []
        self.packs: dict[int, RankPack] = {}
        # Per pack, row id -> slot (0: the pack's zero slot), covering every id the routing
        # can hand out (routing.id_capacity), so a forward pass never has to grow one.
        self._slot_tables: dict[int, torch.Tensor] = {}
        routing.watch(self)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self.routing.watch(self)  # a copy's routing is a copy too: it must grow this copy's tables

    @property
    def base(self) -> nn.Module:
        return self.__dict__["_base"]

    def _params(self):
        return (self.lora_A, self.lora_B)

    def extra(self, attr: str) -> AdapterParameters:
        """The holder of a variant tensor (core.variants.VariantTensor.attr) for every adapter here."""
        return cast(AdapterParameters, self._modules[attr])

    # --- adding and removing adapters --------------------------------------
    def add(self, name: str, rank: int, alpha: float, dropout: float, use_rslora: bool,
            init: bool | str | None = True, trainable: bool = True, variant: LoraVariant = PLAIN_LORA) -> None:
        """Add adapter `name`. `init=None` leaves its tensors (factors and the variant's) unwritten,
        for a caller (a validated load) that writes every one of them next."""
        assert name not in self.info, name  # callers check names first
        device = placement.execution_device(self.base)  # offloaded: the hook's device, never meta
        pack = self.packs.get(rank)
        if pack is None:
            pack = self.packs[rank] = RankPack(rank, self.in_features, self.out_features, device,
                                               self.kind.factor_dtype(self.base), self.routing.reserved_slots + 1)
        scale = lora_scale(alpha, rank, use_rslora)
        slot = pack.add(name, scale, self._params(), zero=init is not None)
        self.lora_A[name] = nn.Parameter(pack.A[slot], requires_grad=trainable)
        self.lora_B[name] = nn.Parameter(pack.B[slot], requires_grad=trainable)
        self.info[name] = _AdapterInfo(rank, scale, dropout, variant)
        if variant.corrects_output:
            self._correcting.add(name)
        assert variant.supports(self.kind), "callers refuse a variant on kinds it does not support"
        shapes = variant.tensor_shapes(self.in_features, self.out_features, rank)
        for tensor in variant.tensors:
            self.extra(tensor.attr)[name] = nn.Parameter(
                torch.zeros(shapes[tensor.role], device=device, dtype=self.kind.factor_dtype(self.base)),
                requires_grad=trainable)
        self._set_slot(rank, self.routing.id_for(name), slot)  # id_for first: it may grow the tables
        if init is not None:
            self.reset(name, init)

    def remove(self, name: str) -> None:
        if name in self.merged:
            self.unmerge([name])
        info = self.info.pop(name)
        self._correcting.discard(name)
        pack = self.packs[info.rank]
        pack.remove(name)
        # The name's row id may be handed to another adapter once every module has dropped it
        # (AdapterModel.delete_adapter releases it): this module must map it to no slot.
        self._set_slot(info.rank, self.routing.ids[name], 0)
        del self.lora_A[name], self.lora_B[name]
        for tensor in info.variant.tensors:
            del self.extra(tensor.attr)[name]
        if not pack.used:
            # An empty pack has no parameter to take a later .to()'s device and dtype from;
            # drop it, and a later adapter of this rank gets a fresh one beside the base weight.
            del self.packs[info.rank], self._slot_tables[info.rank]

    @torch.no_grad()
    def reset(self, name: str, init: bool | str = True) -> None:
        """PEFT's initialisations, so a fresh adapter behaves the same in both; then the
        variant's tensors, which may depend on A and B (DoRA's magnitude does)."""
        A, B = self.lora_A[name], self.lora_B[name]
        if self.kind.indexed:
            if init is False:
                nn.init.normal_(A)
                nn.init.normal_(B)
            else:  # B random, A zero: still a no-op at start
                nn.init.zeros_(A)
                nn.init.normal_(B)
        else:
            if init == "gaussian":
                nn.init.normal_(A, std=1 / self.info[name].rank)
            else:
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            if init is False:
                nn.init.kaiming_uniform_(B, a=math.sqrt(5))
            else:
                nn.init.zeros_(B)
        self.info[name].variant.reset(self, name)

    def _set_slot(self, rank: int, row_id: int, slot: int) -> None:
        table = self._slot_tables.get(rank)
        if table is None:
            table = self._slot_tables[rank] = torch.zeros(self.routing.id_capacity, dtype=torch.long,
                                                          device=self.packs[rank].device)
        table[row_id] = slot

    def reserve_slots(self, adapters: int) -> None:
        """Room for `adapters` adapters in every pack here (see AdapterRouting.reserve)."""
        for pack in self.packs.values():
            pack.reserve(adapters + 1, self._params())  # + the zero slot

    def cover_ids(self, capacity: int) -> None:
        """Grow the slot tables to `capacity` row ids (called by the routing when it hands out
        a new highest id, so tables of modules that adapter skips cover it too)."""
        for rank, table in self._slot_tables.items():
            if table.numel() < capacity:
                grown = table.new_zeros(capacity)
                grown[: table.numel()] = table
                self._slot_tables[rank] = grown

    def tensors_of(self, name: str) -> dict[str, nn.Parameter]:
        """Adapter `name`'s tensors here, by role: the same roles as adapter_tensor_shapes."""
        tensors = {"A": self.lora_A[name], "B": self.lora_B[name]}
        for tensor in self.info[name].variant.tensors:
            tensors[tensor.role] = self.extra(tensor.attr)[name]
        return tensors

    def has(self, name: str) -> bool:
        return name in self.info

    def is_noop(self, name: str) -> bool:
        """True while the adapter cannot change outputs (its variant says when)."""
        return self.info[name].variant.is_noop(self, name)

    # --- device moves -------------------------------------------------------
    def _apply(self, fn, recurse=True):
        # nn.Module._apply gives each parameter its own new tensor; re-pack so the
        # parameters are views of the packs again, on the new device / dtype.
        super()._apply(fn, recurse)
        for pack in self.packs.values():
            pack.rebuild_from(self._params())
        for rank, table in self._slot_tables.items():
            self._slot_tables[rank] = table.to(self.packs[rank].device)
        return self

    # --- forward --------------------------------------------------------------
    def forward(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        route = self.routing.current()  # this call's own routing, or the model-wide one
        if route.disabled or not self.info:
            return result
        # The hook sees the module's inputs as passed: accelerate moves them to the execution
        # device (where result and the factors are) only inside the module's own forward.
        x = x.to(result.device)
        if route.row_ids is not None:
            return self._mixed_delta(x, route, result)
        base_out = result
        for name in route.active:
            if name in self.info and name not in self.merged:
                result = result + self._delta(name, x, base_out).to(result.dtype)
        return result

    def _base_without_bias(self, base_out: torch.Tensor) -> torch.Tensor:
        if getattr(self.base, "bias", None) is None:
            return base_out
        return base_out - placement.tensor_values(self.base, "bias", base_out.device)

    def _lora_out(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s·B·A·x (..., out), the x it was computed from: after dropout, on the factors' device)."""
        A, B = self.lora_A[name], self.lora_B[name]
        scale = self.info[name].scale
        if self.kind.indexed:
            base = cast(nn.Embedding, self.base)
            after_A = F.embedding(x, A.T, base.padding_idx, base.max_norm,
                                  base.norm_type, base.scale_grad_by_freq, base.sparse)  # (..., r)
            return (after_A @ B.T) * scale, x  # (..., out)
        # Functional dropout: a module per adapter per layer would make every walk over
        # the model's modules (and so every load) slower as adapters accumulate.
        # x may sit elsewhere when accelerate's device_map hooks move inputs inside forward.
        x = F.dropout(x.to(A.device, A.dtype), self.info[name].dropout, self.training)
        return F.linear(F.linear(x, A), B) * scale, x  # (..., in) -> (..., r) -> (..., out)

    def _delta(self, name: str, x: torch.Tensor, base_out: torch.Tensor | None = None) -> torch.Tensor:
        """What adapter `name` adds to the base output. `base_out`: the base layer's output for x,
        which a variant reuses as W x (as PEFT does) where no dropout separates the two."""
        out, dropped_x = self._lora_out(name, x)
        variant = self.info[name].variant
        if variant.corrects_output:
            same_x = self.kind.indexed or not self.training or self.info[name].dropout == 0
            wx = self._base_without_bias(base_out) if base_out is not None and same_x else None
            fix = variant.correction(self, name, dropped_x, out, wx)
            if fix is not None:
                out = out + fix
        return out

    def _mixed_corrections(self, x: torch.Tensor, route: Route, out: torch.Tensor,
                           base_out: torch.Tensor) -> torch.Tensor:
        """Add their variant's correction to the rows of adapters that have one (their plain LoRA
        part already came through the gathered path). Reads which rows use them: only when one is here."""
        assert route.row_ids is not None
        row_ids = route.row_ids.to(x.device)  # made on the model's first device (model/mixed.py)
        rows_of = {self.routing.ids[n]: n for n in self._correcting if n not in self.merged}
        for row_id in row_ids.unique().tolist():
            name = rows_of.get(row_id)
            if name is None:
                continue
            rows = (row_ids == row_id).nonzero().squeeze(1)
            lora_out, xr = self._lora_out(name, x.index_select(0, rows))  # (k, ..., out); eval: no dropout
            base_rows = self._base_without_bias(base_out.index_select(0, rows)).reshape(lora_out.shape)
            fix = self.info[name].variant.correction(self, name, xr, lora_out, base_rows)
            if fix is not None:
                out = out.index_add(0, rows, fix.reshape(rows.numel(), -1, self.out_features).to(out.dtype))
        return out

    def _corrected(self) -> bool:
        """Does an unmerged adapter here correct its LoRA output (a variant such as DoRA)?"""
        return any(n not in self.merged for n in self._correcting)

    def _mixed_delta(self, x: torch.Tensor, route: Route, result: torch.Tensor) -> torch.Tensor:
        """Each row with its own adapter: gather per-row factors, two batched matmuls.

        The loop runs over distinct *ranks* at this module (usually one), never
        over adapters. Nothing here reads a tensor's value on the host, so a
        forward pass stays free of per-layer synchronisation; nothing here writes
        shared state either, so calls on several threads can run at once.

        Precision: each matmul accumulates in float32 (CPU and CUDA kernels do for
        half types) and rounds once; the scale is kept in float32 and applied to h
        in float32, so h is rounded once more, and the fused baddbmm rounds the sum
        into the output once. The single-adapter path rounds once more (A, B, scale, sum).
        """
        rows = x.shape[0]
        row_ids, in_use = route.row_ids, route.row_names
        assert row_ids is not None  # forward sends only mixed routes here
        row_ids = row_ids.to(result.device)  # a no-op unless device_map spread the model over devices
        out = result.reshape(rows, -1, self.out_features)  # (rows, T, out), a view of result
        # Variant rows (DoRA) reuse the base output as W x (as PEFT does); it is about to be added to in place.
        corrected = self._corrected()
        base_out = out.clone() if corrected else out
        # Accumulate in place when autograd does not need result as it was (mixed batches are eval-only).
        inplace = not (torch.is_grad_enabled() and out.requires_grad) and out.dtype == self.packs_dtype()
        for rank, pack in self.packs.items():
            if len(self.packs) > 1 and in_use is not None and pack.used.keys().isdisjoint(in_use):
                continue  # no row of this batch uses an adapter of this rank here
            table = self._slot_tables[rank]
            if table.numel() < self.routing.id_capacity:  # not grown with the ids (never, normally):
                table = F.pad(table, (0, self.routing.id_capacity - table.numel()))  # slot 0, no write
            slots = table.index_select(0, row_ids)  # (rows,)
            scale = pack.scale.index_select(0, slots)  # (rows,), float32
            one_token = out.shape[1] == 1  # decode: factors are read in place, not gathered
            if self.kind.indexed:
                # At: (cap, V, r); row x[b, t] of row b's At -> (rows, T, r)
                h = pack.At[slots.view(-1, *([1] * (x.dim() - 1))), x].reshape(rows, -1, rank)
            elif one_token:
                # Row b's h is the x[b]-weighted sum of the `in` rows of its At slot:
                # embedding_bag over At viewed as (cap * in, r).
                rows_of_A = slots.view(-1, 1) * self.in_features + torch.arange(self.in_features, device=slots.device)
                h = F.embedding_bag(rows_of_A, pack.At.view(-1, rank), mode="sum",
                                    per_sample_weights=x.reshape(rows, -1).to(pack.dtype))  # (rows, r)
            else:
                At = pack.At.index_select(0, slots)  # (rows, in, r)
                h = torch.bmm(x.reshape(rows, -1, self.in_features).to(At.dtype), At)  # (rows, T, r)
            scale = scale.view(-1, 1, 1)  # (rows, 1, 1)
            if one_token:
                # Row b's output is the h[b]-weighted sum of the r rows of its Bt slot:
                # embedding_bag over Bt viewed as (cap * r, out).
                rows_of_B = slots.view(-1, 1) * rank + torch.arange(rank, device=slots.device)  # (rows, r)
                part = F.embedding_bag(rows_of_B, pack.Bt.view(-1, self.out_features),
                                       per_sample_weights=h.reshape(rows, rank), mode="sum")  # (rows, out)
                part = part.view(rows, 1, self.out_features)
                # Scaled in float32 inside the add: one rounding for scale and sum together.
                out = out.addcmul_(part, scale) if inplace else torch.addcmul(out, part, scale).to(out.dtype)
            else:
                h = (h.reshape(rows, -1, rank) * scale).to(pack.dtype)  # (rows, T, r), scaled in float32
                Bt = pack.Bt.index_select(0, slots)  # (rows, r, out)
                if inplace:
                    out.baddbmm_(h, Bt)  # out += h @ B^T, fused: (rows, T, r) @ (rows, r, out)
                else:
                    out = out + torch.bmm(h, Bt).to(out.dtype)
        if corrected:
            out = self._mixed_corrections(x, route, out, base_out)
        return out.view_as(result)

    def packs_dtype(self) -> torch.dtype:
        return next(iter(self.packs.values())).dtype

    # --- merge ------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """s · B A laid out like the base weight."""
        A, B = self.lora_A[name].detach(), self.lora_B[name].detach()
        delta = (B @ A) * self.info[name].scale  # (out, r) @ (r, in) -> (out, in)
        return self.kind.to_weight_layout(delta)  # Conv1D: (in, out); Embedding: (V, dim)

    def _pending(self, names: list[str]) -> list[str]:
        return [n for n in names if n in self.info and n not in self.merged]

    @torch.no_grad()
    def merged_weight(self, weight: torch.Tensor, names: list[str]) -> torch.Tensor:
        """A new tensor: `weight` (laid out like the base weight) with `names` merged in, in merge
        order (each by its variant: plain LoRA adds s·B·A, DoRA rescales)."""
        merged = weight.clone()
        for name in self._merge_order(names):
            self._merge_one(merged, name)
        return merged

    def _merge_order(self, names: list[str]) -> list[str]:
        """Non-additive merges (DoRA) first, on the base weight alone, as their forward sees it
        (W x is the base output); additive ones after, in any order. Otherwise as given."""
        return sorted(names, key=lambda n: self.info[n].variant.additive_merge)

    def _merge_one(self, weight: torch.Tensor, name: str) -> object:
        """Merge `name` into `weight` (laid out like the base weight) in place; return what
        its variant's unmerge needs back."""
        layout = self.kind.to_weight_layout  # its own inverse: (out, in) <-> the stored layout
        delta = layout(self.delta_weight(name)).to(weight.device)  # (out, in)
        new, state = self.info[name].variant.merge(self, name, layout(weight), delta)
        weight.copy_(layout(new))
        return state

    @torch.no_grad()
    def merge_is_finite(self, names: list[str]) -> bool:
        """Would merging `names` leave the base weight free of NaN and inf?"""
        todo = self._pending(names)
        if not todo:
            return True
        return bool(torch.isfinite(self.merged_weight(placement.tensor_values(self.base), todo)).all())

    @torch.no_grad()
    def merge(self, names: list[str]) -> list[str]:
        """Fold adapters into the base weight. Returns the names merged now."""
        todo = self._pending(names)
        assert not (todo and self.kind.quantized), "AdapterModel refuses merges into quantized weights"
        if not todo:
            return todo  # nothing to write: an offloaded weight keeps its hook's own map
        batch = todo
        if self.merged and not all(self.info[n].variant.additive_merge for n in todo):
            # A non-additive merge must meet the base weight alone: take the merged ones out
            # (exactly: unmerge is the inverse), then merge everything back in merge order.
            batch = list(self.merged) + todo
            self.unmerge()
        if not self.merged:
            placement.begin_merge(self.base)  # offloaded: keep W to put back exactly at the last unmerge
        weight = placement.writable_weight(self.base)
        for name in self._merge_order(batch):
            self._merge_state[name] = self._merge_one(weight, name)
            self.merged.append(name)
        return todo

    @torch.no_grad()
    def unmerge(self, names: list[str] | None = None) -> None:
        """Undo merges, newest first. A variant's merge may not be additive (DoRA's is not), so
        unmerging one adapter also unmerges (and then re-merges) the adapters merged after it."""
        names = list(self.merged) if names is None else [n for n in names if n in self.merged]
        if not names:
            return
        weight = placement.writable_weight(self.base)
        first = min(self.merged.index(n) for n in names)
        later = self.merged[first:]
        # Additive merges commute: take out just these. Otherwise unwind back to the first of them.
        undo = names if all(self.info[n].variant.additive_merge for n in later) else later
        remerge = [n for n in later if n not in names and n in undo]
        layout = self.kind.to_weight_layout
        for name in reversed(undo):
            delta = layout(self.delta_weight(name)).to(weight.device)  # (out, in)
            restored = self.info[name].variant.unmerge(self, name, layout(weight), delta, self._merge_state.pop(name))
            weight.copy_(layout(restored))
            self.merged.remove(name)
        if not self.merged:
            placement.end_merge(self.base)
        self.merge(remerge)

    def extra_repr(self) -> str:
        ranks = {n: i.rank for n, i in self.info.items()}
        return f"kind={self.kind.name}, adapters={ranks}, merged={self.merged}"
