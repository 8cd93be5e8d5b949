"""Resuming a run with another config: which changed keys refuse, which need --resume-force, which pass."""

from prcl.config import (
    RESUME_BREAKING,
    RESUME_FREE,
    apply_overrides,
    load_config,
    resume_conflicts,
    resume_refusal,
)

STORED = load_config(None, ["train.out_dir=runs/x", "optim.lr=0.01", "train.iterations=100"])


def changed(*overrides: str):
    return apply_overrides(STORED, list(overrides))


def refusal(*overrides: str, force: bool = False) -> str | None:
    return resume_refusal(*resume_conflicts(STORED, changed(*overrides)), force, "runs/x")


def test_an_unchanged_config_resumes():
    assert resume_conflicts(STORED, changed()) == ([], [])
    assert refusal() is None


def test_a_method_change_is_refused_even_with_force():
    assert resume_conflicts(STORED, changed("method.name=supervised")) == (["method.name"], [])
    for force in (False, True):
        assert refusal("method.name=supervised", force=force) == (
            "cannot resume runs/x: method.name changed (prcl -> supervised); start a new run in a new train.out_dir")


def test_an_lr_change_is_refused_without_force_and_accepted_with_it():
    assert resume_conflicts(STORED, changed("optim.lr=0.02")) == ([], ["optim.lr"])
    assert refusal("optim.lr=0.02") == (
        "cannot resume runs/x: optim.lr changed (0.01 -> 0.02); pass --resume-force to go on with the new values")
    assert refusal("optim.lr=0.02", force=True) is None


def test_extending_the_run_and_moving_it_pass_silently():
    free = ["train.iterations=500", "train.out_dir=runs/moved", "data.num_workers=0", "train.device=cpu",
            "train.log_every=1", "train.eval_every=7", "train.checkpoint_every=9", "train.progress=false",
            "model.weights=imagenet"]  # the initial weights: a resumed run reads its checkpoint instead
    assert resume_conflicts(STORED, changed(*free)) == ([], [])
    assert refusal(*free) is None and refusal("train.iterations=500") is None


def test_several_keys_are_named_in_one_line_breaking_ones_alone_when_any():
    overrides = ["method.name=mean_teacher", "model.encoder=resnet50", "optim.lr=0.02", "train.amp=true"]
    breaking, other = resume_conflicts(STORED, changed(*overrides))
    assert (breaking, other) == (["model.encoder", "method.name"], ["optim.lr", "train.amp"])
    message = resume_refusal(breaking, other, True, "runs/x/checkpoints/last.pt")
    assert message == ("cannot resume runs/x/checkpoints/last.pt: model.encoder changed (resnet101 -> resnet50), "
                       "method.name changed (prcl -> mean_teacher); start a new run in a new train.out_dir")
    assert refusal("optim.lr=0.02", "train.amp=true", "data.scale_range=[0.75,1.25]") == (
        "cannot resume runs/x: data.scale_range changed ([0.5, 1.5] -> [0.75, 1.25]), optim.lr changed "
        "(0.01 -> 0.02), train.amp changed (false -> true); pass --resume-force to go on with the new values")
    assert resume_refusal([], ["optim.lr"], False) == (  # plain keys (no values known) still make one line
        "cannot resume the run: optim.lr changed; pass --resume-force to go on with the new values")


def test_every_listed_key_is_classified_and_long_values_are_cut():
    assert not set(RESUME_BREAKING) & set(RESUME_FREE)
    keys = {"data.root": "/data/voc", "data.splits": "s", "data.split_seed": 1, "data.num_labels": 1464,
            "data.dataset": "voc", "data.num_classes": 5, "model.output_stride": 8, "prcl.deterministic": True,
            "prcl.global_prototypes": True}
    breaking, other = resume_conflicts(STORED, changed(*(f"{key}={value}" for key, value in keys.items())))
    assert set(breaking) == set(keys) - {"data.root"} and other == ["data.root"]  # a dataset may move
    message = refusal(f"data.root=/very/long/path/{'x' * 80}")
    assert f"data.root changed (null -> /very/long/path/{'x' * 11}...);" in message  # 30 characters a value
