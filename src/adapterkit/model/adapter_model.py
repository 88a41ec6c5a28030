"""AdapterModel: a user's model with named LoRA adapters (PEFT's PeftModel, ported).

The wrapped model keeps its classes and keys; adapters hang off the targeted
modules (see core.injection). Which adapters run is held in one place, the
AdapterRouting shared by every adapted module, so switching is one assignment.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from adapterkit.core import placement
from adapterkit.core.bnb_layout import keep_standard_4bit_layout
from adapterkit.core.config import LoraConfig, is_base_init
from adapterkit.core.injection import (
    attach,
    detach,
    lora_modules,
    swap_in_modules_to_save,
    swap_out_modules_to_save,
)
from adapterkit.core.layer import AdapterRouting
from adapterkit.core.targeting import find_targets
from adapterkit.core.variants import variant_of
from adapterkit.errors import (
    AdapterCapacityError,
    AdapterExistsError,
    AdapterStateError,
    InvalidAdapterNameError,
    NaNInMergeError,
    UnknownAdapterError,
)
from adapterkit.io.fingerprint import BaseFingerprint, base_fingerprint
from adapterkit.io.folder import read_adapter_folder, write_adapter_folder
from adapterkit.model.base_init import apply_base_init, check_base_init, convert_to_plain_lora
from adapterkit.model.loading import LoadPlan, check_load, check_variant_targets, resolve_saved_modules
from adapterkit.model.mixed import mixed_rows
from adapterkit.model.offload import check_offloaded_targets, forget_tie, weight_sharers
from adapterkit.model.quantized import dequantized_replacements, refuse_quantized_merge, swap_in_dequantized
from adapterkit.model.state import adapter_tensors, base_module_at, saved_wrappers, trained_biases
from adapterkit.model.values import check_values


class ActiveAdapters(list):
    """The active adapter names. PEFT exposes this as an attribute on some classes and a
    method on others; ported code uses both, so it is a list that can also be called."""

    def __call__(self) -> ActiveAdapters:
        return self


class AdapterModel(nn.Module):
    def __init__(self, model: nn.Module, config: LoraConfig | None = None, adapter_name: str = "default") -> None:
        super().__init__()
        if lora_modules(model):
            raise AdapterStateError(
                f"{type(model).__name__} already carries LoRA adapters. Wrap the plain base model, "
                "or use add_adapter / load_adapter on the existing AdapterModel."
            )
        self.model = model
        self._snapshot: list[tuple[str, nn.Module]] | None = None
        self._target_cache: dict[str, tuple] = {}
        self._ownership: dict[str, list] = {}  # adapter -> its parameters and module copies
        self.routing = AdapterRouting()
        self.peft_config: dict[str, LoraConfig] = {}
        self._trainable: dict[str, bool] = {}
        # Fingerprinted before any adapter or merge can change the weights.
        self.base_fingerprint: BaseFingerprint = base_fingerprint(model)
        for param in model.parameters():  # the base is frozen; adapters bring their own parameters
            param.requires_grad_(False)
        # bitsandbytes' CPU inference layout has no gradient and other arithmetic (core/bnb_layout.py).
        keep_standard_4bit_layout(model)
        if config is not None:
            self.add_adapter(adapter_name, config)

    # --- the module walk, cached ---------------------------------------------------
    # Walking a real model's modules in Python costs milliseconds; loads and switches
    # would pay it several times each. The snapshot is retaken whenever adapterkit
    # changes the module tree (attaching, detaching, swapping modules_to_save).
    def _module_walk(self) -> list[tuple[str, nn.Module]]:
        if self._snapshot is None:
            self._snapshot = list(self.model.named_modules())
        return self._snapshot

    def _structure_changed(self) -> None:
        self._snapshot = None
        self._target_cache.clear()

    def _targets_for(self, config: LoraConfig):
        """(LoRA targets, modules_to_save paths) of a config; cached while the tree is unchanged,
        since a thousand adapters trained with one recipe all target the same modules."""
        key = json.dumps([config.target_modules, config.exclude_modules, config.layers_to_transform,
                          config.layers_pattern, config.modules_to_save, config.task_type], sort_keys=True)
        if key not in self._target_cache:
            if len(self._target_cache) >= 64:  # bounded: a server may see thousands of recipes
                del self._target_cache[next(iter(self._target_cache))]
            modules = self._module_walk()
            self._target_cache[key] = (find_targets(self.model, config, modules),
                                       resolve_saved_modules(self.model, config, modules))
        return self._target_cache[key]

    def _loras(self):
        return lora_modules(self.model, self._module_walk())

    def _saved(self):
        return saved_wrappers(self.model, self._module_walk())

    # --- passthrough ------------------------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["model"], name)

    @property
    def base_model(self) -> AdapterModel:
        """PEFT code reaches the user's model as `peft_model.base_model.model`; so can ported code."""
        return self

    def get_base_model(self) -> nn.Module:
        return self.model

    def forward(self, *args, adapter_names: list[str] | None = None, **kwargs):
        with self._rows(adapter_names, args, kwargs):
            return self.model(*args, **kwargs)

    def generate(self, *args, adapter_names: list[str] | None = None, **kwargs):
        if adapter_names is not None:
            # generate() repeats each input row per beam (or per returned sequence).
            beams = int(kwargs.get("num_beams") or 1)
            repeat = beams if beams > 1 else int(kwargs.get("num_return_sequences") or 1)
            adapter_names = [name for name in adapter_names for _ in range(repeat)]
            rows = _batch_size(args, kwargs)
            if rows is not None:
                rows *= repeat
        else:
            rows = None
        with self._rows(adapter_names, args, kwargs, rows=rows):
            return cast(Any, self.model).generate(*args, **kwargs)

    def _rows(self, adapter_names, args, kwargs, rows: int | None = None):
        if adapter_names is None:
            return contextlib.nullcontext()
        return mixed_rows(self, adapter_names, rows if rows is not None else _batch_size(args, kwargs))

    # --- adapters -------------------------------------------------------------------
    @property
    def active_adapters(self) -> ActiveAdapters:
        return ActiveAdapters(self.routing.active)

    @property
    def active_adapter(self) -> str | list[str] | None:
        active = self.routing.active
        if not active:
            return None
        return active[0] if len(active) == 1 else list(active)

    def _check_known(self, names) -> list[str]:
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise UnknownAdapterError(
                f"No adapter named {unknown} is loaded; loaded adapters: {sorted(self.peft_config)}. "
                "Load it first with load_adapter(path, adapter_name=...)."
            )
        return names

    def add_adapter(self, adapter_name: str, peft_config: LoraConfig, trainable: bool = True,
                    _activate: bool | None = None) -> None:
        """Attach a new adapter, initialised as `peft_config.init_lora_weights` says."""
        _check_name(adapter_name)
        if adapter_name in self.peft_config:
            raise AdapterExistsError(
                f"An adapter named {adapter_name!r} is already loaded. Pick another name, or "
                f"delete_adapter({adapter_name!r}) first."
            )
        peft_config.validate()  # a LoraConfig is mutable: fields may have changed since it was made
        peft_config.check_supported()
        bad_scales = check_values(peft_config, {}).errors("", "LoraConfig")  # a NaN alpha poisons every output
        if bad_scales:
            raise bad_scales[0]
        targets, saved = self._targets_for(peft_config)  # raises before anything changes
        check_base_init(self.model, peft_config, targets)
        check_variant_targets(peft_config, targets)
        check_offloaded_targets(self.model, peft_config, targets, saved, self._module_walk())
        self._install(adapter_name, peft_config, targets, saved, trainable, peft_config.init_lora_weights, _activate)
        if is_base_init(peft_config.init_lora_weights):  # PiSSA / OLoRA: factors from the base, residual left in it
            apply_base_init(self, adapter_name, peft_config, write_factors=True)

    def _install(self, adapter_name, peft_config, targets, saved, trainable, init, activate,
                 factors: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        """Attach a checked adapter to its target modules, initialised as `init` says, or,
        for a validated load, written straight from `factors` (module -> {"A", "B", the variant's})."""
        if peft_config.task_type in ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS"):
            peft_config.modules_to_save = peft_config.head_modules_to_save()
        new_modules = bool(saved) or any(not hasattr(t.module, "lora") for t in targets)
        with torch.no_grad():
            for target in targets:
                lora = attach(target.module, target.kind, self.routing)
                lora.add(adapter_name, peft_config.rank_for(target.name), peft_config.alpha_for(target.name),
                         peft_config.lora_dropout, peft_config.use_rslora,
                         None if factors is not None else init, trainable=False,
                         variant=variant_of(peft_config))
                if factors is not None:  # one pass: no second walk to find the slots again
                    for role, tensor in lora.tensors_of(adapter_name).items():
                        tensor.copy_(factors[target.name][role])
        for path in saved:
            swap_in_modules_to_save(self.model, path, self.routing).add(adapter_name, trainable=False)
        if new_modules:
            self._structure_changed()
        self.peft_config[adapter_name] = peft_config
        self._trainable[adapter_name] = trainable
        self._ownership.pop(adapter_name, None)
        if trainable:
            for bias in trained_biases(self.model, peft_config, adapter_name, self._module_walk()):
                bias.requires_grad_(True)
        if activate or (activate is None and not self.routing.active):
            self._activate((adapter_name,))

    def _activate(self, names: tuple[str, ...]) -> None:
        """Make `names` the active adapters. As in PEFT, only active adapters train; only the
        adapters whose state changes are touched, so switching costs the same with 1 or 1000."""
        previous = set(self.routing.active)
        self.routing.active = names
        changed = previous.symmetric_difference(names)
        if changed:
            self._set_requires_grad({n: n in names and self._trainable.get(n, False) for n in changed})

    def _set_requires_grad(self, flags: dict[str, bool]) -> None:
        for name, flag in flags.items():
            for owner in self._owned_by(name):
                owner.requires_grad_(flag)

    def _owned_by(self, name: str) -> list:
        """The adapter's factor Parameters and modules_to_save copies, cached per adapter so a
        switch touches only them, not every module of the model."""
        if name not in self._ownership and name in self.peft_config:
            owned: list = []
            for lora in self._loras().values():
                if lora.has(name):
                    owned += list(lora.tensors_of(name).values())
            owned += [w.modules_to_save[name] for w in self._saved().values() if name in w.modules_to_save]
            self._ownership[name] = owned
        return self._ownership.get(name, [])

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        names = self._check_known(adapter_name)
        self._activate(tuple(names))

    set_active_adapters = set_adapter  # the name transformers' integration uses

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_known(adapter_name)
        tree_changed = False
        for lora in self._loras().values():
            if lora.has(adapter_name):
                lora.remove(adapter_name)
                if not lora.info:
                    detach(lora.base)
                    tree_changed = True
        for path, wrapper in self._saved().items():
            if adapter_name in wrapper.modules_to_save:
                wrapper.remove(adapter_name)  # a child module goes: the tree changes
                tree_changed = True
                if not len(wrapper.modules_to_save):
                    swap_out_modules_to_save(self.model, path)
        if tree_changed:  # else other adapters still hold every module: the cached walk stays valid
            self._structure_changed()
        self.routing.release(adapter_name)  # no module maps its row id now: the next adapter reuses it
        self._ownership.pop(adapter_name, None)
        del self.peft_config[adapter_name]
        self._trainable.pop(adapter_name, None)
        remaining = tuple(n for n in self.routing.active if n != adapter_name)
        if not remaining and self.peft_config:
            remaining = (next(iter(self.peft_config)),)
        self._activate(remaining)

    def reserve_adapter_slots(self, adapters: int) -> None:
        """Make room now for `adapters` resident adapters, so loads up to that many never
        reallocate a pack (a stall that grows with the number resident). See AdapterRouting.reserve."""
        if isinstance(adapters, bool) or not isinstance(adapters, int) or adapters < 0:
            raise AdapterCapacityError(
                f"reserve_adapter_slots takes a number of adapters (an int >= 0), got {adapters!r}.")
        self.routing.reserve(adapters)

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the base model alone inside the block (merged adapters are unmerged for it)."""
        merged = self._merged_names()
        if merged:
            self.unmerge_adapter()
        previous = self.routing.disabled
        self.routing.disabled = True
        try:
            yield
        finally:
            self.routing.disabled = previous
            if merged:
                self.merge_adapter(merged)

    def disable_adapters(self) -> None:
        self.routing.disabled = True

    def enable_adapters(self) -> None:
        self.routing.disabled = False

    # --- combining and hot-swapping (model/combine.py, model/hotswap.py) -------------------
    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str,
                             combination_type: str = "svd", svd_rank: int | None = None,
                             svd_clamp: float | None = None, svd_full_matrices: bool = True,
                             svd_driver: str | None = None, density: float | None = None,
                             majority_sign_method: str = "total") -> None:
        """Add `adapter_name`, a weighted combination of loaded adapters (PEFT's signature and types:
        cat, linear, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd,
        magnitude_prune, magnitude_prune_svd). Everything is checked before the model changes."""
        from adapterkit.model.combine import add_weighted_adapter

        add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, svd_rank, svd_clamp,
                             svd_full_matrices, svd_driver, density, majority_sign_method)

    def hotswap_adapter(self, model_id: str | os.PathLike, adapter_name: str = "default") -> None:
        """Replace the weights of loaded adapter `adapter_name` in place with those of a folder of the same
        or a smaller rank (zero-padded), without re-injecting: a torch.compile'd model does not recompile."""
        from adapterkit.model.hotswap import hotswap_adapter

        hotswap_adapter(self, model_id, adapter_name=adapter_name)

    # --- saving -----------------------------------------------------------------------
    def adapter_state_dict(self, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        """The adapter's tensors keyed as in PEFT's adapter_model.safetensors."""
        self._check_known(adapter_name)
        return adapter_tensors(self.model, self.peft_config[adapter_name], adapter_name, self._module_walk())

    def save_pretrained(self, save_directory: str | os.PathLike, selected_adapters: list[str] | None = None,
                        safe_serialization: bool = True,
                        path_initial_model_for_weight_conversion: str | os.PathLike | None = None,
                        **_ignored) -> Path:
        """Write every adapter (or `selected_adapters`) in PEFT's layout, atomically:
        'default' at the root, the others in sub-folders named after them.
        `path_initial_model_for_weight_conversion`: the folder saved right after a PiSSA / OLoRA init;
        the adapters are then written as plain LoRAs of the original base (PEFT's convention)."""
        names = self._check_known(selected_adapters) if selected_adapters is not None else list(self.peft_config)
        if not names:
            raise UnknownAdapterError("This model has no adapter to save; add or load one first.")
        payload = {}
        metadata = self.base_fingerprint.to_metadata()
        for name in names:
            config = LoraConfig.from_dict(self.peft_config[name].to_dict())
            config.inference_mode = True
            if not config.base_model_name_or_path:
                config.base_model_name_or_path = self.base_fingerprint.name or None
            tensors = self.adapter_state_dict(name)
            if path_initial_model_for_weight_conversion is not None:
                config, tensors = convert_to_plain_lora(config, tensors, path_initial_model_for_weight_conversion)
            payload[name] = (config, tensors, metadata)
        return write_adapter_folder(save_directory, payload, root_name="default",
                                    safe_serialization=safe_serialization)

    # --- loading ----------------------------------------------------------------------
    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str = "default", is_trainable: bool = False,
                     overwrite: bool = False, strict_base: bool = False, allow_nonfinite: bool = False,
                     **_ignored) -> None:
        """Load a PEFT adapter folder under `adapter_name`. Everything (config fields, keys, shapes,
        dtypes, finite values and scales, the base) is checked before the model is touched, by
        model.loading.check_load, the function `adapterkit verify` runs too: on any error the
        model is exactly as before. `allow_nonfinite=True` accepts NaN / inf values."""
        _check_name(adapter_name)
        files = read_adapter_folder(model_id)
        if adapter_name in self.peft_config and not overwrite and not self._is_noop(adapter_name):
            raise AdapterExistsError(
                f"An adapter named {adapter_name!r} is already loaded and holds trained weights. "
                f"Load under another name (adapter_name=...), or pass overwrite=True to replace it."
            )
        # (A same-name adapter being replaced targets the same modules, so checking with it
        # still attached sees the layout a fresh load would.)
        check = check_load(self.model, files, self.base_fingerprint, strict_base=strict_base,
                           allow_nonfinite=allow_nonfinite, modules=self._module_walk(),
                           targets_for=self._targets_for)
        for message in check.warnings:
            warnings.warn(message, stacklevel=2)
        check.raise_first()
        plan, config = check.plan, files.config
        assert plan is not None  # check_load plans whenever it found no problem
        was_active = self.routing.active if adapter_name in self.routing.active else None
        if adapter_name in self.peft_config:
            self.delete_adapter(adapter_name)  # the plan's target modules are base modules: still valid
        config.inference_mode = not is_trainable
        try:
            self._install(adapter_name, config, plan.targets, plan.saved_modules, is_trainable, None,
                          False if was_active else None, factors=plan.factors)
            self._fill(adapter_name, plan)
            if is_base_init(config.init_lora_weights):  # as PEFT: the base becomes the residual the file was trained on
                apply_base_init(self, adapter_name, config, write_factors=False)
        except BaseException:
            # Only an exhausted resource can fail here (every input was checked): undo the part done.
            self._discard_partial(adapter_name)
            raise
        if was_active:  # a replaced adapter stays active, beside the others that were
            self._activate(was_active)

    def _discard_partial(self, adapter_name: str) -> None:
        """Remove every trace of a half-installed adapter, as if its load had never started."""
        self.peft_config.setdefault(adapter_name, LoraConfig())  # delete_adapter needs the name known
        self.delete_adapter(adapter_name)

    def _is_noop(self, adapter_name: str) -> bool:
        loras = [lora for lora in self._loras().values() if lora.has(adapter_name)]
        # A modules_to_save copy is a no-op while it still equals the module it copied.
        copies_untouched = all(
            _same_state(w.modules_to_save[adapter_name], w.original_module)
            for w in self._saved().values() if adapter_name in w.modules_to_save)
        return copies_untouched and all(lora.is_noop(adapter_name) for lora in loras)

    @torch.no_grad()
    def _fill(self, adapter_name: str, plan: LoadPlan) -> None:
        # The LoRA factors were written by _install; here the rest of the adapter.
        module: Any  # a ModulesToSave, or a module with a bias / weight
        for path, params in plan.saved.items():
            module = self.model.get_submodule(path)
            module.modules_to_save[adapter_name].load_state_dict(params)
        for path, bias in plan.biases.items():
            module = base_module_at(self.model, path)  # a modules_to_save wrapper holds the base's module
            module.bias.copy_(bias)
        for path, weight in plan.base_weights.items():
            module = self.model.get_submodule(path)
            current = placement.tensor_values(module)  # offloaded by accelerate: read through its hook
            if not torch.equal(current, weight.to(current.device, current.dtype)):
                warnings.warn(
                    f"The adapter file carries a full weight for {path} (PEFT's save_embedding_layers) that "
                    "differs from this base's; it replaces the base weight, as PEFT does.", stacklevel=3)
                placement.replace_weight(module, weight)

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, strict_base: bool = False, allow_nonfinite: bool = False,
                        **kwargs) -> AdapterModel:
        wrapped = cls(model)
        wrapped.load_adapter(model_id, adapter_name, is_trainable=is_trainable, strict_base=strict_base,
                             allow_nonfinite=allow_nonfinite)
        wrapped.set_adapter(adapter_name)
        return wrapped

    # --- merging ----------------------------------------------------------------------
    def _merged_names(self) -> list[str]:
        merged: list[str] = []
        for lora in self._loras().values():
            merged.extend(n for n in lora.merged if n not in merged)
        return merged

    def _check_ties(self, names: list[str], untie_weights: bool) -> None:
        """A merge writes into the base weight; if that weight is shared (a tied lm_head),
        the other module would change too. Untie on request, else refuse."""
        sharers = weight_sharers(self.model)  # ties by identity, and those accelerate's offload hides
        for path, lora in self._loras().items():
            if not any(lora.has(n) and n not in lora.merged for n in names):
                continue
            sharing = sharers.get(path, [])
            if not sharing:
                continue
            if not untie_weights:
                raise AdapterStateError(
                    f"{path}.weight is tied to {sharing[0]}.weight; merging would silently change "
                    f"{sharing[0]} too. Pass untie_weights=True to give {path} its own copy of the weight "
                    "(the model then stores both), or keep the adapter unmerged."
                )
            lora.base.weight = nn.Parameter(lora.base.weight.detach().clone(), requires_grad=False)
            forget_tie(self.model, path)
            config = getattr(self.model, "config", None)
            if config is not None and hasattr(config, "tie_word_embeddings"):
                config.tie_word_embeddings = False
            warnings.warn(f"Untied {path}.weight from {sharing[0]}.weight to merge into it.", stacklevel=3)

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False,
                      untie_weights: bool = False, _skip_quantized: bool = False) -> None:
        """Fold adapters (default: the active ones) into the base weights. Idempotent.
        Refused on quantized (bitsandbytes) layers: see model/quantized.py. A weight accelerate
        offloaded is merged into an in-memory copy and restored exactly: see core/placement.py."""
        names = self._check_known(adapter_names) if adapter_names is not None else list(self.routing.active)
        loras = self._loras()
        if _skip_quantized:  # merge_and_unload(dequantize=True) merges those itself
            loras = {p: lora for p, lora in loras.items() if not lora.kind.quantized}
        refuse_quantized_merge(loras, names)  # first: nothing has changed yet
        if safe_merge:
            bad = [path for path, lora in loras.items() if not lora.merge_is_finite(names)]
            if bad:
                raise NaNInMergeError(
                    f"Merging {names} would put NaN or inf into {bad[:3]}; nothing was merged. "
                    "The adapter weights are broken (diverged training?): check them, or retrain."
                )
        self._check_ties(names, untie_weights)  # after the checks that can refuse: untying changes the model
        for lora in loras.values():
            lora.merge(names)

    def unmerge_adapter(self) -> None:
        for lora in self._loras().values():
            lora.unmerge()

    @property
    def merged_adapters(self) -> list[str]:
        return self._merged_names()

    def _unload(self, keep: str | None) -> nn.Module:
        for lora in list(self._loras().values()):
            detach(lora.base)
        for path in list(self._saved()):
            swap_out_modules_to_save(self.model, path, keep=keep)
        self._structure_changed()
        self.peft_config.clear()
        self._trainable.clear()
        self._ownership.clear()
        self.routing.active = ()
        self.routing.release_all()
        return self.model

    def merge_and_unload(self, safe_merge: bool = False, adapter_names: list[str] | None = None,
                         untie_weights: bool = False, dequantize: bool = False, **_ignored) -> nn.Module:
        """Merge (default: the active adapters) and return the plain model, no adapter modules left.

        On a quantized base this is refused unless `dequantize=True`: then every bitsandbytes
        layer becomes a float nn.Linear (its dequantized weight, adapters merged in) and the
        model returned is a float model."""
        names = self._check_known(adapter_names) if adapter_names is not None else list(self.routing.active)
        if dequantize:
            replacements = dequantized_replacements(self.model, self._loras(), names, safe_merge,
                                                    self._module_walk())
            self.merge_adapter(names, safe_merge=safe_merge, untie_weights=untie_weights, _skip_quantized=True)
            swap_in_dequantized(self.model, replacements)
            self._structure_changed()
        else:
            self.merge_adapter(names, safe_merge=safe_merge, untie_weights=untie_weights)
        keep = next((n for n in names if any(n in w.modules_to_save for w in self._saved().values())), None)
        return self._unload(keep)

    def unload(self) -> nn.Module:
        """Remove every adapter and return the original base model (merged adapters are unmerged)."""
        self.unmerge_adapter()
        return self._unload(None)

    # --- accounting -----------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = total = 0
        for param in self.model.parameters():
            total += param.numel()
            if param.requires_grad:
                trainable += param.numel()
        return trainable, total

    def print_trainable_parameters(self) -> str:
        """Print PEFT's line, and return it too (PEFT returns None, which ported code prints)."""
        trainable, total = self.get_nb_trainable_parameters()
        line = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        print(line)
        return line


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _check_name(name: object) -> None:
    """A name becomes a parameter key and, on save, a sub-folder name: it must be usable as both."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "it must be a non-empty string"
    elif name == "__base__":
        problem = "'__base__' is reserved for base rows in mixed batches"
    elif any(ch in name for ch in "./\\") or not name.isprintable():
        problem = "it must not contain '.', '/', '\\' or control characters"
    elif len(name.encode("utf-8", "surrogatepass")) > 255 or any("\ud800" <= ch <= "\udfff" for ch in name):
        problem = "it must be valid text of at most 255 bytes (it names a folder when saved)"
    if problem:
        raise InvalidAdapterNameError(f"Adapter name {name!r} is not usable: {problem}. Pick another name.")


def _batch_size(args, kwargs) -> int | None:
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    if args and isinstance(args[0], torch.Tensor):
        return args[0].shape[0]
    return None


PeftModel = AdapterModel


def get_peft_model(model: nn.Module, peft_config: LoraConfig, adapter_name: str = "default", **_ignored) -> AdapterModel:
    """Wrap `model` and attach a fresh adapter, as PEFT's get_peft_model does."""
    return AdapterModel(model, peft_config, adapter_name)
