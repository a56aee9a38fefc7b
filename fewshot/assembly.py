"""A trained model put back together from its run directory: encoder, weights and head.

The encoder layer knows nothing of heads or run directories; this module, above both,
is the one place that joins them (from `model.json`, without the config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fewshot.data.images import Normalize
from fewshot.errors import DataError, UsageError
from fewshot.methods import FewShotHead, build_head, head_class
from fewshot.models import build_backbone
from fewshot.models.embedding import EmbeddingSpec, install
from fewshot.run import RunDir, resolve_run
from fewshot.schema import ModelMeta


def load_model(run: RunDir | str | Path | None = None, head: str | None = None,
               **head_options: Any) -> tuple[FewShotHead, ModelMeta]:
    """(model, model.json) of a run; `head` swaps in another head on the same encoder.

    The encoder always gets the run's weights; the run's own head parameters and options
    are used only when the head is the one it was trained with. `head_options` must be
    options the head declares. Heads that centre features get the run's base mean, and
    those with a `power` option its stored base features.
    """
    run = run if isinstance(run, RunDir) else resolve_run(run)
    meta = run.read_meta()
    encoder = build_backbone(meta.backbone, image_size=meta.image_size, **meta.backbone_args)
    weights = run.load_weights()
    name = head or meta.head
    options = dict(meta.head_options) if name == meta.head else {}
    options.update(head_options)
    declared = head_class(name).options()
    stored = run.load_prototypes() if run.prototypes_path.is_file() \
        and ({"base_mean", "base_features"} & set(declared)) else None
    given = dict(options)
    if stored is not None:
        if "base_mean" in declared:
            options.setdefault("base_mean", stored.base_mean)
        if "base_features" in declared and stored.base_features is not None:
            options.setdefault("base_features", stored.base_features)
    if options.get("power") is not None and "base_features" in declared \
            and options.get("base_features") is None:
        raise UsageError(f"head option power={options['power']} needs base features, and "
                         "this run stores none", run.path,
                         "re-run the pretrain or meta-train that wrote it with this fewshot "
                         "version, or drop the power option")
    model = build_head(name, encoder, **options)
    if not meta.embedding.plain and not reads_embedding(model) and stored is not None:
        # the stored statistics are of the embedding; this head reads the plain output
        if "base_mean" in declared and stored.output_mean is not None:
            given.setdefault("base_mean", stored.output_mean)
        model = build_head(name, encoder, **given)
    try:
        if name == meta.head:
            model.load_state_dict(weights)
        else:
            encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in weights.items()
                                     if k.startswith("encoder.")})
    except RuntimeError as exc:  # missing, unexpected or mis-shaped keys
        first = str(exc).splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise DataError(f"model.safetensors does not fit model.json ({detail[:160]})",
                        run.path, "the files come from different runs; re-run the "
                        "command that wrote them") from None
    model.eval()
    use_embedding(model, meta.embedding)
    return model, meta


def reads_embedding(head: FewShotHead) -> bool:
    """Heads that only read features and learn nothing of their own before the support
    set (SimpleShot, the probes, transductive heads) read the run's embedding; heads that
    re-run the encoder or were trained on its plain output (finetune, MAML family,
    siamese) keep the encoder's output."""
    own = [name for name, _ in head.named_parameters() if not name.startswith("encoder.")]
    return head.feature_based and not own


def use_embedding(head: FewShotHead, spec: EmbeddingSpec) -> None:
    """Install the run's embedding on the head's encoder when the head reads it."""
    if not spec.plain and reads_embedding(head):
        install(head.encoder, spec)


def model_transform(meta: ModelMeta) -> Normalize:
    """The normalisation the model was trained with."""
    return Normalize(meta.normalization.mean, meta.normalization.std)
