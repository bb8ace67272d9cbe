"""The ``exgra_med`` model type: ModelMeta, loader and model arch for swift."""

from __future__ import annotations

import logging
from pathlib import Path

from swift.model import Model, ModelGroup, ModelLoader, ModelMeta, register_model
from swift.model.model_arch import MultiModelKeys, register_model_arch
from transformers import AutoConfig, AutoModelForCausalLM

from ..common.jsonio import read_json
from ..modeling.configuration import ExGraMedConfig
from ..modeling.modeling import ExGraMedForCausalLM
from ..modeling.original_checkpoint import OriginalCheckpoint
from ..modeling.original_config import is_original_checkpoint
from ..modeling.processing import ExGraMedProcessor
from ..modeling.vision import VISION_TOWER_PREFIX, load_vision_tower_weights
from ..common.weight_files import check_weight_files, weight_names
from ..settings import apply_mga_to_config, current_settings
from .template import TEMPLATE_TYPE

logger = logging.getLogger(__name__)
MODEL_TYPE = "exgra_med"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")

# Module-path prefixes used by --freeze_vit / --freeze_aligner / --freeze_llm, LoRA targets and
# --vit_lr / --aligner_lr.
EXGRA_MED_ARCH = MultiModelKeys(
    MODEL_TYPE,
    language_model=["model.embed_tokens", "model.layers", "model.norm", "lm_head"],
    aligner=["model.mm_projector"],
    vision_tower=["model.vision_tower"],
)


class ExGraMedLoader(ModelLoader):
    """Loads the plugin layout and the original LLaVA-Med layout of the published checkpoints.

    It never trusts a ``model_type`` string it did not write itself: ``exgra_med`` configs are ours,
    and a ``llava`` config is only accepted in the original flat LLaVA-Med form (§1.8), read
    without ``AutoConfig``.
    """

    _original: OriginalCheckpoint | None = None

    def get_config(self, model_dir: str) -> ExGraMedConfig:
        config_path = Path(model_dir) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: not an exgra_med checkpoint")
        self.auto_config_cls = ExGraMedConfig
        settings = current_settings()
        if is_original_checkpoint(model_dir):
            loader = settings.loader
            self._original = OriginalCheckpoint.open(
                model_dir, vision_tower=loader.vision_tower, dense_connector=loader.dense_connector,
                num_l=loader.num_l, legacy_tokenization=settings.template.legacy_tokenization)
            apply_mga_to_config(self._original.config, settings)  # stage-2 GNN weights load into model.mga when on
            return self._original.config
        model_type = read_json(config_path).get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(f"{config_path}: model_type is {model_type!r}, expected {MODEL_TYPE!r} or an original "
                             "LLaVA-Med checkpoint (model_type 'llava', architectures ['LlavaLlamaForCausalLM'], mm_* "
                             "keys at the top level)")
        config = ExGraMedConfig.from_pretrained(model_dir)
        apply_mga_to_config(config, settings)
        return config

    def get_processor(self, model_dir: str, config) -> ExGraMedProcessor:
        if self._original is not None:
            return self._original.processor()
        if not any((Path(model_dir) / name).is_file() for name in _TOKENIZER_FILES):
            raise FileNotFoundError(f"{model_dir}: no tokenizer file ({' or '.join(_TOKENIZER_FILES)})")
        return ExGraMedProcessor.from_pretrained(model_dir)

    def get_model(self, model_dir: str, config, processor, model_kwargs):
        self.auto_model_cls = ExGraMedForCausalLM
        if self._original is not None:
            self._original.config = config  # swift's _postprocess_config edits (dtype, attention) apply
            model = self._original.load_model(**model_kwargs)
            compat = getattr(self, "_compat_transformers5", None)
            if compat is not None:
                compat(model)
            return model
        check_weight_files(model_dir)  # a truncated shard is named here, not as a bare SafetensorError
        model = super().get_model(model_dir, config, processor, model_kwargs)
        override = current_settings().loader.vision_tower
        bundled = any(name.startswith(VISION_TOWER_PREFIX) for name in weight_names(model_dir))
        if override or not bundled:
            source = override or config.mm_vision_tower
            if not source:
                raise ValueError(f"{model_dir} bundles no vision tower and its config names none (mm_vision_tower); "
                                 "pass --model_kwargs '{\"vision_tower\": \"<CLIP dir or hub id>\"}'")
            load_vision_tower_weights(model.model.vision_tower, source)
        return model


def register_exgra_med_model() -> None:
    AutoConfig.register(MODEL_TYPE, ExGraMedConfig, exist_ok=True)
    AutoModelForCausalLM.register(ExGraMedConfig, ExGraMedForCausalLM, exist_ok=True)
    register_model_arch(EXGRA_MED_ARCH, exist_ok=True)
    register_model(
        ModelMeta(
            MODEL_TYPE,
            [
                ModelGroup([
                    Model(hf_model_id="MERGE-Group/exgra-med"),
                    Model(hf_model_id="MERGE-Group/exgra-med-10"),
                    Model(hf_model_id="MERGE-Group/exgra-med-40"),
                    Model(hf_model_id="MERGE-Group/exgra-med-dci"),
                    Model(hf_model_id="MERGE-Group/exgra-med-dci-vqa-rad"),
                    Model(hf_model_id="MERGE-Group/exgra-med-dci-slake"),
                    Model(hf_model_id="MERGE-Group/exgra-med-dci-pathvqa"),
                    Model(hf_model_id="MERGE-Group/llava-med-10"),
                    Model(hf_model_id="MERGE-Group/llava-med-40"),
                ]),
            ],
            ExGraMedLoader,
            template=TEMPLATE_TYPE,
            model_arch=MODEL_TYPE,
            architectures=["ExGraMedForCausalLM"],
            is_multimodal=True,
            tags=["vision", "medical"],
        ),
        exist_ok=True,
    )
