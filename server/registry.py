"""The models a server serves: each loaded once, with its engine, languages and request defaults."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mtserve.engine.core import EngineCore
from mtserve.engine.errors import EngineDeadError
from mtserve.engine.scheduler import Scheduler
from mtserve.engine.translator import Translator
from mtserve.model import bundled_model_dir
from mtserve.model.checkpoint import model_languages
from mtserve.model.cpu_linear import warm_up
from mtserve.model.languages import LanguageCodes

from .config import ModelSpec, ServerConfig
from .engine_thread import EngineThread
from .errors import DefaultModelError, DrainingError, ModelExistsError, ModelNotFoundError, NotReadyError
from .metrics import Metrics

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "default"


def bundled_model_spec() -> ModelSpec:
    """The model shipped inside the package (mtserve/model/default/), served when no --model is given."""
    try:
        path = bundled_model_dir()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no --model was given and {exc}; pass --model DIR (a Marian/OPUS-MT "
                                "directory) or MTSERVE_MODEL") from None
    return ModelSpec(BUNDLED_MODEL_NAME, str(path))


@dataclass
class ServedModel:
    name: str
    path: Path
    translator: Translator
    engine: EngineThread
    source_language: str
    target_language: str
    is_default: bool

    @property
    def languages(self) -> LanguageCodes:
        """The languages a request may choose from: a multilingual model's, a multi-target one's targets
        (empty for a single-pair model)."""
        targets = self.translator.tokenizer.target_languages
        return targets if len(targets) > 1 else LanguageCodes(())

    @property
    def max_source_length(self) -> int:
        return self.translator.config.max_position_embeddings

    @property
    def max_target_length(self) -> int:
        return self.translator.config.max_position_embeddings


class ModelRegistry:
    """Loads the configured models and hands out their engines; knows when the server is ready or draining."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics | None = None,
        on_engine_death: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        #: Called (from the dying engine's thread) with the model's name when its engine thread dies.
        self.on_engine_death = on_engine_death
        self.models: dict[str, ServedModel] = {}
        self.default_name: str | None = None
        self.ready = False
        self.draining = False

    def load(self) -> None:
        """Load every model, start its engine and warm it up (blocking; run it off the event loop)."""
        specs = list(self.config.models) or [bundled_model_spec()]
        default = self.config.default_model_name or specs[0].name
        for spec in specs:
            self.models[spec.name] = self._load_one(spec, is_default=spec.name == default)
        self.default_name = default
        self.ready = True

    def _load_one(self, spec: ModelSpec, *, is_default: bool) -> ServedModel:
        config = self.config
        translator = Translator.load(spec.path, device=config.device, dtype=config.dtype, quantize=config.quantize,
                                     compile=config.compile, shortlist=config.shortlist)
        # Warm-up: the first step pays for allocator and kernel initialisation, not the first caller, and the
        # packed layers meet their row buckets now (cpu_linear.warm_up says why).
        tokenizer = translator.tokenizer
        warm_up_languages = {
            "source_language": tokenizer.source_languages.codes[0] if tokenizer.needs_source_language else None,
            "target_language": tokenizer.target_languages.codes[0] if tokenizer.needs_target_language else None,
        }
        translator.translate(["Warm-up."], max_length=4, **warm_up_languages)
        warm_up(translator.model, config.max_batch_rows)
        scheduler = Scheduler(config.max_batch_rows, config.max_batch_tokens, config.max_queue)
        core = EngineCore(translator.model, scheduler, name=spec.name)
        compiled = getattr(translator.model, "compiled_step", None)
        if compiled is not None:  # every graph now, before SERVING: no caller waits for a compile
            beams = int(translator.defaults.get("beam_size", 1))
            seconds = compiled.warm_up(core.batch.cache, sorted({1, beams}), pad_token=translator.config.pad_token_id)
            log.info("model %s: compiled %d decoder-step graphs in %.1fs", spec.name, len(compiled.compile_seconds),
                     seconds)
        engine = EngineThread(spec.name, core, self.metrics, on_death=lambda _: self._engine_died(spec.name))
        engine.start()
        source, target = model_languages(Path(spec.path))
        model = ServedModel(spec.name, Path(spec.path), translator, engine, source, target, is_default)
        if self.metrics is not None:
            self.metrics.add_model(spec.name, self.info_labels(model), translator.load_seconds)
        labels = self.info_labels(model)
        log.info(
            "loaded model %s from %s in %.2fs (%s, %s, %.1fM parameters)",
            spec.name, spec.path, translator.load_seconds, labels["device"], labels["dtype"],
            translator.num_parameters / 1e6,
        )  # fmt: skip
        return model

    @staticmethod
    def info_labels(model: ServedModel) -> dict[str, str]:
        config = model.translator.config
        return {  # no path: metric labels must not leak the file system (the start-up log says where)
            "source_language": model.source_language,
            "target_language": model.target_language,
            "device": str(model.translator.device),
            "dtype": str(model.translator.dtype).removeprefix("torch."),
            "quantize": model.translator.quantize,
            "d_model": str(config.d_model),
            "encoder_layers": str(config.encoder_layers),
            "decoder_layers": str(config.decoder_layers),
        }

    def add(self, spec: ModelSpec, *, make_default: bool = False) -> ServedModel:
        """Load one more model while serving (blocking: off the event loop); it serves once this returns."""
        if spec.name in self.models:
            raise ModelExistsError(spec.name)
        model = self._load_one(spec, is_default=False)
        self.models[spec.name] = model
        if make_default:
            self.default_name = spec.name
            for other in self.models.values():
                other.is_default = other.name == spec.name
        return model

    def remove(self, name: str) -> ServedModel:
        """Take a model out: calls that name it from now on find no such model. Its engine keeps running
        what it has; the caller stops it (engine.close) once the calls for it have ended."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(name, self.models)
        if model.is_default:
            raise DefaultModelError(name)
        del self.models[name]
        if self.metrics is not None:
            self.metrics.remove_model(name)
        return model

    def get(self, name: str) -> ServedModel:
        """The model a request names ('' = the default); raises for unknown names, draining, not ready,
        and a model whose engine has died (EngineDeadError: UNAVAILABLE, so callers go elsewhere)."""
        if self.draining:
            raise DrainingError()
        if not self.ready:
            raise NotReadyError()
        model = self.models.get(name or self.default_name or "")
        if model is None:
            raise ModelNotFoundError(name, self.models)
        if model.engine.error is not None:
            raise EngineDeadError(model.name, model.engine.error)
        return model

    def _engine_died(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.engine_died(name)
        if self.on_engine_death is not None:
            self.on_engine_death(name)

    def ordered(self) -> list[ServedModel]:
        """The default model first, then the others by name."""
        return sorted(self.models.values(), key=lambda m: (not m.is_default, m.name))

    def stop(self) -> None:
        for model in self.models.values():
            model.engine.stop()
