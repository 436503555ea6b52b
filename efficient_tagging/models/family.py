"""What the rest of the package may ask a model family: the written-down interface.

Each family module (`mobilenet`, `dymn`, `passt`, `ast`) holds all of its knowledge -- its
layers, its catalogue rows, its rules -- and exports one `FAMILY` object, an instance of a
`ModelFamily` subclass. `registry` collects them into the table; `get_model`, the trainer,
export, complexity and tagging ask the family instead of branching on the architecture name.

Every family's model also keeps one forward contract: `forward(spectrogram)` with a
(B, 1, n_mels, T) spectrogram returns `(logits, embedding)`, and equals
`forward_head(forward_features(spectrogram))`. The CNN students add `forward_frames(features)`
(logits per output frame) and the transformer teachers (`is_teacher`) `needs_sliding_windows(frames)` /
`sliding_window_forward(spectrogram)` for inputs longer than they were built for.

A model that `get_model` returns also carries what it was built as and for: `arch`, `config`
(constructor kwargs), `preprocessing` (frontend settings), `dataset`, `label_map`, `task` and
`pretrained_name`. Code that also accepts a user's own module reads those with a default.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

from torch import nn

from ..frontends import DEFAULT_PREPROCESSING


@dataclass(frozen=True)
class PretrainedEntry:
    """One downloadable checkpoint and everything needed to rebuild and feed its model."""

    name: str
    arch: str  # the family: "mn", "dymn", or the teachers "passt" / "ast"
    filename: str
    config: dict[str, Any]  # model constructor kwargs (reference argument names)
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    dataset: str = "audioset"  # "audioset" (527 AudioSet classes), "imagenet" (1000-class ImageNet pre-training)
    #                           or "openmic" (20 OpenMIC-2018 instruments, PaSST only)
    published_map: Optional[float] = None  # AudioSet eval mAP, from the release file name / README
    published_params_m: Optional[float] = None  # as printed in the EfficientAT README
    published_gmacs: Optional[float] = None
    url: str = ""
    sha256: Optional[str] = None  # not published upstream; verified when set
    description: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", self.config.get("label_dim", 527)))


class ModelFamily:
    """One architecture family. Subclasses override what differs; the defaults are the students'."""

    #: the architecture name (`get_model(arch=...)`, checkpoints' "arch" field)
    name: ClassVar[str]
    #: the model class (its constructor takes the reference's own argument names)
    model_class: ClassVar[type[nn.Module]]
    #: the constructor's name for the number of outputs (AST says `label_dim`)
    class_count_key: ClassVar[str] = "num_classes"
    #: a transformer teacher: fixed input length, long inputs tagged as the mean over windows
    #: (`needs_sliding_windows`), global receptive field, no student-only complexity options
    is_teacher: ClassVar[bool] = False

    def catalogue(self) -> list[PretrainedEntry]:
        """The family's released checkpoints (catalogue rows), in catalogue order."""
        return []

    def presets(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Named shapes without released weights: name -> (config, preprocessing)."""
        return {}

    # ----- building ----------------------------------------------------------------
    def constructor_arguments(self) -> Optional[set[str]]:
        """The constructor's keyword names (None when it takes **kwargs): unknown ones are refused by name."""
        signature = inspect.signature(self.model_class.__init__)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            return None
        return {name for name in signature.parameters if name != "self"}

    def build(self, **config: Any) -> nn.Module:
        return self.model_class(**config)

    def normalise_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """`num_classes` is accepted for every family: renamed to the constructor's own key."""
        if self.class_count_key != "num_classes" and "num_classes" in config:
            config = dict(config)
            config[self.class_count_key] = config.pop("num_classes")
        return config

    def fresh_config(self, config: dict[str, Any], cache_dir: Any) -> dict[str, Any]:
        """Config of a fresh (no pretrained weights) model; `cache_dir` is where initial weights are cached."""
        return config

    def shapes_only_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Config that builds the same tensors without reading or downloading anything."""
        return config

    def input_config(self, *, num_classes: int, n_mels: int, frames: int,
                     shape: dict[str, Any]) -> dict[str, Any]:
        """Constructor kwargs of a model for (n_mels, frames) spectrograms and `num_classes` outputs.

        `shape`: the training config's student-shape options (`width_mult`, `head_type`,
        `se_dims`, `strides`); a family takes the ones it has."""
        raise NotImplementedError

    # ----- pretrained weights -------------------------------------------------------
    def pretrained_configs(self, config: dict[str, Any], stored: dict[str, Any]
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(caller's config, stored config) adjusted by the family's rules for a model that
        receives pretrained weights."""
        return config, stored

    def start_options(self, *, n_mels: int, pretrain_final_temp: float) -> dict[str, Any]:
        """Extra `get_model` options when training starts from a pretrained model."""
        return {}

    def restore_state(self, model: nn.Module, metadata: dict[str, Any], config: dict[str, Any]) -> None:
        """Restore training state a checkpoint holds besides the weights (`checkpoint_state`)."""

    def checkpoint_state(self, model: nn.Module) -> dict[str, Any]:
        """Training state to store in a checkpoint besides the weights."""
        return {}

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Per-epoch schedule of the model itself (not the optimizer's); returns values to record."""
        return {}

    # ----- export and complexity ---------------------------------------------------------
    def export_form(self, model: nn.Module) -> nn.Module:
        """The model itself, or an eval-mode copy computing the same function in a form ONNX holds."""
        return model

    #: complexity options that change only this family's shape (e.g. the students' SE dims)
    complexity_options: ClassVar[frozenset[str]] = frozenset()
    #: the constructor argument that must equal the input's mel bins (a model that checks its input height)
    mel_bins_argument: ClassVar[Optional[str]] = None
    #: marker, colour and legend label on the complexity trade-off plot
    plot_style: ClassVar[tuple[str, str, str]] = ("x", "tab:gray", "other")

    def constructor_defaults(self) -> dict[str, Any]:
        """The constructor's keyword defaults (to compare configs completely)."""
        signature = inspect.signature(self.model_class.__init__)
        return {key: p.default for key, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}

    def token_info(self, model: nn.Module, input_shape: Sequence[int]) -> Optional[dict[str, Any]]:
        """Tokens a transformer attends over for `input_shape`: {"tokens", "grid", "prefix_tokens"}; None for CNNs."""
        return None


def catalogue_entry(name: str, arch: str, filename: str, config: dict[str, Any], *, url: str,
                    preprocessing: Optional[dict[str, Any]] = None, dataset: str = "audioset",
                    published_map: Optional[float] = None, params_m: Optional[float] = None,
                    gmacs: Optional[float] = None, description: str = "") -> PretrainedEntry:
    """A catalogue row: the preprocessing is the default mel's with `preprocessing` on top; an
    ImageNet release has 1000 classes, the others AudioSet's 527 unless `config` says."""
    prep = dict(DEFAULT_PREPROCESSING, **(preprocessing or {}))
    full_config = {"num_classes": 1000 if dataset == "imagenet" else 527, **config}
    return PretrainedEntry(name=name, arch=arch, filename=filename, config=full_config, preprocessing=prep,
                           dataset=dataset, published_map=published_map, published_params_m=params_m,
                           published_gmacs=gmacs, url=url, description=description)
