"""What the bench feeds a task head: the encoder's features of a split, for text and image encoders alike.

The runner only ever calls ``featurizer.load(path)`` (one encoder: the base, an expert or a merged model) and
``featurizer(encoder, split) -> [N, width]``; everything that differs between a sentence encoder and a vision encoder
stays in this module. Both featurizers also implement ``mergesmith.adapt.featurizer.Featurizer`` (model inputs of
some rows of a split, pooling with autograd), what the data-driven merges read the pool through.

- text: token ids truncated to ``MAX_LENGTH``, mean-pooled last hidden states (the built-in zoo's pooling);
- image: CLIP vision models give their pooled output passed through the visual projection when the checkpoint has
  one (``CLIPVisionModelWithProjection`` -> ``image_embeds``), else the pooled output; other ViT-like models give
  their pooler output (or the first token's state when they have no pooler). Images go through the base
  directory's image processor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mergesmith.bench.buckets import LengthBuckets, bucket_by_length
from mergesmith.bench.encoder import EncodedSplit, encode_split, pad_batch, split_features
from mergesmith.errors import MergesmithError
from mergesmith.io.parse import read_json
from mergesmith.pooling import mean_pool

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Keep a split's preprocessed pixels in memory up to this size: the grid search scores the validation split once per
# grid point and decoding images again each time would dominate. Bigger splits (FusionBench's SUN397 test split is
# about 12 GB of 224 px float32 pixels) are decoded batch by batch on every pass instead.
PIXEL_CACHE_BYTES = 256 * 1024 * 1024
IMAGE_BATCH = 64

# Model types treated as image encoders when a pool does not say its modality.
_IMAGE_MODEL_TYPES = {"clip", "clip_vision_model", "vit", "deit", "beit", "dinov2", "siglip", "siglip_vision_model"}


def read_model_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.exists() and not path.is_symlink():
        raise MergesmithError(
            f"{directory}: no config.json; give the directory a model was saved to with save_pretrained"
        )
    config = read_json(path, what="config.json", root=directory, error=MergesmithError, fix="fix or re-save the model")
    return config


def hidden_width(config: dict) -> int:
    """The model's hidden width from its config.json. Architectures name it differently (GPT-2 ``n_embd``, T5
    ``d_model``); transformers' config class for the model type maps its own name onto ``hidden_size``."""
    if "hidden_size" in config:
        return int(config["hidden_size"])
    from transformers import AutoConfig

    model_type = config.get("model_type")
    try:
        settings = {k: v for k, v in config.items() if k != "model_type"}
        return int(AutoConfig.for_model(str(model_type), **settings).hidden_size)
    except (ValueError, KeyError, AttributeError, TypeError):
        raise MergesmithError(
            f"config.json (model_type {model_type!r}) names no hidden width that transformers knows; give a "
            "transformers model with a hidden_size (or its architecture's name for it, e.g. n_embd)"
        ) from None


def infer_modality(config: dict) -> str:
    """``image`` for CLIP/ViT-like configs (by model type, or an image size and patch size), else ``text``."""
    model_type = str(config.get("model_type", ""))
    if (
        model_type in _IMAGE_MODEL_TYPES
        or ("image_size" in config and "patch_size" in config)
        or "vision_config" in config
    ):
        return "image"
    return "text"


def _seeded_from_pretrained(cls, path: Path) -> nn.Module:
    # Weights a checkpoint lacks (e.g. a pooler a masked-LM checkpoint never had) initialise identically in the base,
    # every expert and every merged model, so they cancel in task vectors instead of adding random differences.
    torch.manual_seed(0)
    return cls.from_pretrained(path).eval()


class TextFeaturizer:
    """A BERT-like encoder (``AutoModel``) with the base directory's tokenizer; features are mean-pooled tokens."""

    modality = "text"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id

    @classmethod
    def from_base(cls, base_dir: Path) -> TextFeaturizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(base_dir)
        except (OSError, ValueError, TypeError) as exc:
            raise MergesmithError(
                f"{base_dir}: no usable tokenizer ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "save the tokenizer beside the base model (tokenizer.save_pretrained)"
            ) from None
        if tokenizer.pad_token_id is None:
            raise MergesmithError(
                f"{base_dir}: the tokenizer has no padding token; set one and save the tokenizer again"
            )
        return cls(tokenizer)

    @staticmethod
    def feature_width(config: dict) -> int:
        return hidden_width(config)

    def load(self, path: Path) -> nn.Module:
        from transformers import AutoModel

        return _seeded_from_pretrained(AutoModel, path)

    def encode(self, examples) -> EncodedSplit:
        """``examples``: objects with ``.text`` and ``.label`` (bench ``Example``)."""
        return encode_split(self.tokenizer, examples)

    def __call__(self, encoder: nn.Module, split: EncodedSplit) -> Tensor:
        return split_features(encoder, split, self.pad_id)

    def length_buckets(self, splits: Mapping[str, EncodedSplit]) -> LengthBuckets:
        """Batches over the rows of several splits by token length, for ``bench.buckets.bucketed_features`` (the
        same mean-pooled features as ``__call__``, up to float rounding, for all the splits in one pass)."""
        return bucket_by_length(splits, self.pad_id)

    # --- mergesmith.adapt.featurizer.Featurizer ---

    representation = "mean_tokens"

    def inputs(self, split: EncodedSplit, rows: Tensor) -> dict[str, Tensor]:
        input_ids, mask = pad_batch([split.ids[int(i)] for i in rows], self.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask}

    def select(self, split: EncodedSplit, rows: Tensor) -> EncodedSplit:
        return EncodedSplit(tuple(split.ids[int(i)] for i in rows), split.labels[rows])

    def pool(self, output, inputs: Mapping[str, Tensor], encoder: nn.Module | None = None) -> Tensor:
        return self.pool_hidden(output.last_hidden_state, inputs, encoder)

    def pool_hidden(self, hidden: Tensor, inputs: Mapping[str, Tensor], encoder: nn.Module | None = None) -> Tensor:
        return mean_pool(hidden, inputs["attention_mask"])


class ImageSplit:
    """Image files and their labels; pixels are computed with the featurizer's processor when a pass needs them."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int]):
        self.paths = tuple(Path(p) for p in paths)
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self._cached: Tensor | None = None  # the preprocessed pixels, once a pass found them small enough to keep
        self._too_big = False  # a pass found them too big to keep: decode batch by batch

    def __len__(self) -> int:
        return len(self.paths)


class ImageFeaturizer:
    """A CLIP vision model (or another ViT-like ``AutoModel``) with the base directory's image processor."""

    modality = "image"

    def __init__(self, processor, kind: str):
        self.processor = processor
        self.kind = kind  # "clip_projection" | "clip" | "auto"

    @staticmethod
    def require_processor(base_dir: Path) -> None:
        if not (Path(base_dir) / "preprocessor_config.json").is_file():
            raise MergesmithError(
                f"{base_dir} has no preprocessor_config.json; an image pool needs the base model's image processor "
                "saved beside it (e.g. CLIPImageProcessor.from_pretrained(...).save_pretrained(base_dir))"
            )

    @classmethod
    def from_base(cls, base_dir: Path, config: dict, tensor_names) -> ImageFeaturizer:
        cls.require_processor(base_dir)
        try:
            import PIL  # noqa: F401  (image processors and our decoding need it)
        except ImportError:
            raise MergesmithError("image pools need Pillow; install it with `pip install pillow`") from None
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(base_dir)
        except (OSError, ValueError, TypeError) as exc:
            raise MergesmithError(
                f"{base_dir}/preprocessor_config.json: cannot load the image processor ({exc}); fix or re-save it"
            ) from None
        return cls(processor, cls.kind_of(config, tensor_names))

    @staticmethod
    def kind_of(config: dict, tensor_names) -> str:
        if config.get("model_type") == "clip_vision_model":
            return "clip_projection" if "visual_projection.weight" in set(tensor_names) else "clip"
        return "auto"

    @staticmethod
    def feature_width(config: dict, kind: str) -> int:
        if kind == "clip_projection":
            return int(config["projection_dim"])
        return hidden_width(config)

    def load(self, path: Path) -> nn.Module:
        import transformers

        cls = {
            "clip_projection": transformers.CLIPVisionModelWithProjection,
            "clip": transformers.CLIPVisionModel,
            "auto": transformers.AutoModel,
        }[self.kind]
        return _seeded_from_pretrained(cls, path)

    @property
    def representation(self) -> str:
        return "image_embeds" if self.kind == "clip_projection" else "pooler_output"

    def encode(self, paths: Sequence[Path], labels: Sequence[int]) -> ImageSplit:
        return ImageSplit(paths, labels)

    def _pixels(self, paths: Sequence[Path]) -> Tensor:
        from PIL import Image, UnidentifiedImageError

        images = []
        for path in paths:
            try:
                with Image.open(path) as image:
                    # Grayscale (MNIST), palette and RGBA files all become the 3 channels the models expect.
                    images.append(image.convert("RGB"))
            except (OSError, UnidentifiedImageError) as exc:
                raise MergesmithError(f"{path}: not a readable image ({exc}); remove or replace the file") from None
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def batches(self, split: ImageSplit) -> Iterator[Tensor]:
        """The split's preprocessed pixels, ``IMAGE_BATCH`` images at a time, in the split's order."""
        if split._cached is not None:
            yield from split._cached.split(IMAGE_BATCH)
            return
        keep, kept = None, []
        for start in range(0, len(split), IMAGE_BATCH):
            pixels = self._pixels(split.paths[start : start + IMAGE_BATCH])
            if keep is None:
                keep = len(split) * pixels[0].numel() * pixels.element_size() <= PIXEL_CACHE_BYTES
                split._too_big = not keep
            if keep:
                kept.append(pixels)
            yield pixels
        if keep:
            split._cached = torch.cat(kept)

    @torch.no_grad()
    def __call__(self, encoder: nn.Module, split: ImageSplit) -> Tensor:
        encoder.eval()
        parts = []
        for pixels in self.batches(split):
            inputs = {"pixel_values": pixels}
            parts.append(self.pool(encoder(**inputs), inputs, encoder))
        return torch.cat(parts).float()

    # --- mergesmith.adapt.featurizer.Featurizer ---

    def inputs(self, split: ImageSplit, rows: Tensor) -> dict[str, Tensor]:
        """Pixels of the rows: from the split's cache (filled by one pass over the split when it is small enough),
        else decoded for these rows alone."""
        if split._cached is None and not split._too_big:
            for _ in self.batches(split):
                pass
        if split._cached is not None:
            return {"pixel_values": split._cached[rows]}
        return {"pixel_values": self._pixels([split.paths[int(i)] for i in rows])}

    def select(self, split: ImageSplit, rows: Tensor) -> ImageSplit:
        return ImageSplit([split.paths[int(i)] for i in rows], split.labels[rows].tolist())

    def pool(self, output, inputs: Mapping[str, Tensor], encoder: nn.Module | None = None) -> Tensor:
        """CLIP with a projection: ``image_embeds``; else the pooled output; else the first token's state."""
        if self.kind == "clip_projection" and getattr(output, "image_embeds", None) is not None:
            return output.image_embeds
        if getattr(output, "pooler_output", None) is not None:
            return output.pooler_output
        return self.pool_hidden(output.last_hidden_state, inputs, encoder)

    def pool_hidden(self, hidden: Tensor, inputs: Mapping[str, Tensor], encoder: nn.Module | None = None) -> Tensor:
        """The first token's state, through the encoder's own pooling head when ``encoder`` is given (CLIP: the
        post-layernorm, then the visual projection)."""
        first = hidden[:, 0]
        vision = getattr(encoder, "vision_model", None) if encoder is not None else None
        if vision is not None and hasattr(vision, "post_layernorm"):
            first = vision.post_layernorm(first)
            projection = getattr(encoder, "visual_projection", None)
            if self.kind == "clip_projection" and projection is not None:
                first = projection(first)
        return first


def make_featurizer(modality: str, base_dir: Path, config: dict, tensor_names) -> TextFeaturizer | ImageFeaturizer:
    """The featurizer for ``modality`` built from the base directory (its tokenizer or image processor)."""
    if modality == "text":
        return TextFeaturizer.from_base(base_dir)
    return ImageFeaturizer.from_base(base_dir, config, tensor_names)
