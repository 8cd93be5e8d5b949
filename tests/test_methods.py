"""One training step of the methods: the student's forward passes and what they do to BatchNorm."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re

import pytest
import torch

from prcl import config as config_module
from prcl.checkpoint import load_checkpoint, save_checkpoint
from prcl.config import METHOD_NAMES, load_config
from prcl.errors import UserError
from prcl.methods import METHODS, MeanTeacher, Method, StepInput, build_method
from prcl.methods.base import supervised_loss
from prcl.methods.prcl import contrast_mask
from prcl.methods.base import teacher_pseudo_labels
from prcl.models import build_segmenter, unwrap_model

from tolerances import EPS64, summation_bound


def _running_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers() if "running" in name}


def _step(passes: str, method: str = "prcl", seed: int = 0):
    """One train_step of ``method`` on a tiny resnet18; returns (nets before, nets after, batch, method)."""
    cfg = load_config(None, [f"method.name={method}", f"method.student_passes={passes}", "data.num_classes=3",
                             "prcl.num_queries=8", "prcl.num_negatives=16", "prcl.kernel=chunked",
                             "method.strong_scale_range=[1.0,1.0]"])
    torch.manual_seed(seed)
    chosen = build_method(cfg)
    nets = chosen.build_networks(build_segmenter("resnet18", num_classes=3).train())
    before = copy.deepcopy(nets)
    g = torch.Generator().manual_seed(seed)
    batch = StepInput(labeled_images=torch.randn(2, 3, 64, 64, generator=g),
                      labels=torch.randint(0, 3, (2, 64, 64), generator=g),
                      unlabeled_images=torch.randn(2, 3, 64, 64, generator=g) + 1.0,
                      step=0, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        losses = chosen.train_step(nets, batch)
    assert torch.isfinite(losses["loss"])
    return before, nets, batch, chosen


# the methods with a teacher and a strong view (the mean teacher's student_pass), whichever are registered
TEACHER_METHODS = sorted(name for name, cls in METHODS.items() if issubclass(cls, MeanTeacher))


@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_separate_passes_update_batchnorm_like_two_manual_passes(method):
    before, after, batch, chosen = _step("separate", method)
    # The same step by hand: teacher pseudo-labels, the same strong view, then two student passes.
    teacher = copy.deepcopy(before["teacher"]).train()
    pseudo_labels, confidence = teacher_pseudo_labels(teacher, batch.unlabeled_images)
    strong, _, _ = chosen.strong_view(batch.unlabeled_images, pseudo_labels, confidence,
                                      generator=torch.Generator().manual_seed(7))
    student = before["student"]
    with torch.no_grad():
        student(batch.labeled_images, representation=chosen.uses_representation)
        student(strong, representation=chosen.uses_representation)
    for name, value in _running_stats(student).items():  # the same passes on the same machine: bit for bit
        assert torch.equal(_running_stats(after["student"])[name], value), name
    assert int(after["student"].classifier[1].num_batches_tracked) == 2  # running statistics updated twice
    # the representation head runs only where a loss reads mu (PRCL's student), never in the teacher
    assert int(after["student"].representation[1].num_batches_tracked) == (2 if chosen.uses_representation else 0)
    assert int(after["teacher"].representation[1].num_batches_tracked) == 0
    assert int(after["teacher"].classifier[1].num_batches_tracked) == 1


@pytest.mark.parametrize("passes", ["separate", "joint"])
def test_probability_head_normalises_both_passes_in_one_batch(passes):
    """The release's uncer_head(torch.cat((raw_feat_l, raw_feat_u))): one BatchNorm batch per step."""
    before, after, batch, chosen = _step(passes, "prcl")
    teacher = copy.deepcopy(before["teacher"]).train()
    pseudo_labels, confidence = teacher_pseudo_labels(teacher, batch.unlabeled_images)
    strong, _, _ = chosen.strong_view(batch.unlabeled_images, pseudo_labels, confidence,
                                      generator=torch.Generator().manual_seed(7))
    head = before["probability_head"]
    per_pass = copy.deepcopy(head)
    with torch.no_grad():
        if passes == "separate":
            features = [before["student"](batch.labeled_images).features, before["student"](strong).features]
        else:
            features = list(before["student"](torch.cat([batch.labeled_images, strong])).features.split(2))
        head(torch.cat(features))
        for feature in features:
            per_pass(feature)
    got = _running_stats(after["probability_head"])
    for name, value in _running_stats(head).items():  # the same call on the same machine: bit for bit
        assert torch.equal(got[name], value), name
    assert all(int(value) == 1 for name, value in got.items() if name.endswith("num_batches_tracked"))
    # per-pass normalisation (the former behaviour) would leave other statistics: they differ by more than 1e-3 of
    # their size, which rounding cannot reach (n eps for batch means of n <= 1024 pixels: 1.2e-4 at worst)
    per_pass_stats = _running_stats(per_pass)
    assert any((got[name] - per_pass_stats[name]).abs().max() > 1e-3 * got[name].abs().max() for name in got
               if "running_mean" in name)


def test_joint_pass_gives_other_batchnorm_statistics_than_separate_passes():
    _, separate, _, _ = _step("separate")
    _, joint, _, _ = _step("joint")
    assert int(joint["student"].classifier[1].num_batches_tracked) == 1
    separate_stats, joint_stats = _running_stats(separate["student"]), _running_stats(joint["student"])
    # other batches give other statistics: differences above 1e-3 of their size, which rounding cannot reach
    # (n eps for batch means of n <= 4096 pixels a channel: 4.9e-4 at worst)
    differing = [name for name in separate_stats
                 if separate_stats[name].dtype.is_floating_point
                 and (separate_stats[name] - joint_stats[name]).abs().max() > 1e-3 * joint_stats[name].abs().max()]
    assert len(differing) > len(separate_stats) // 3  # every BN layer's statistics differ, not a few


# --------------------------------------------------------------------------------------------
# the trainer runs any method through the Method interface
# --------------------------------------------------------------------------------------------


class EntropyMinimisation(Method):
    """A toy fourth method: labels plus the student's entropy on unlabeled images, with its own
    optimiser group, a counter carried across steps (and checkpoints), and a post-step update."""

    name = "entropy"
    uses_unlabeled = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.updates = torch.zeros((), dtype=torch.int64)

    def optimizer_groups(self, nets):
        head = [p for p in nets["student"].classifier.parameters()]
        rest = [p for n, p in nets["student"].named_parameters() if p.requires_grad and not n.startswith("classifier")]
        return [{"name": "student", "lr": self.cfg.optim.lr, "params": rest},
                {"name": "classifier", "lr": self.cfg.optim.lr / 10, "params": head}]

    def train_step(self, nets, batch):
        out = nets["student"](torch.cat([batch.labeled_images, batch.unlabeled_images]))
        num_labeled = batch.labeled_images.shape[0]
        sup = supervised_loss(out.logits[:num_labeled], batch.labels)
        prob = out.logits[num_labeled:].float().softmax(dim=1)
        entropy = -(prob * prob.clamp_min(1e-8).log()).sum(1).mean()
        return {"loss": sup + 0.1 * entropy, "sup": sup.detach(), "entropy": entropy.detach()}

    def after_step(self, nets, step):
        self.updates += 1

    def state_dict(self):
        return {"updates": self.updates.clone()}

    def load_state_dict(self, state):
        self.updates = state["updates"].clone()


@pytest.mark.slow
def test_a_new_method_runs_through_the_unchanged_trainer(demo_root, tmp_path, monkeypatch):
    from prcl.checkpoint import load_checkpoint
    from prcl.engine.trainer import Trainer
    from tiny_run import tiny_overrides

    monkeypatch.setitem(METHODS, "entropy", EntropyMinimisation)
    monkeypatch.setattr(config_module, "METHOD_NAMES", (*config_module.METHOD_NAMES, "entropy"))
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(demo_root, out, method="entropy", iterations=3))
    trainer = Trainer(cfg)
    assert set(trainer.nets) == {"student"}
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["student", "classifier"]
    summary = trainer.fit()
    assert summary["method"] == "entropy" and summary["iterations"] == 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert len(train) == 3 and all(r["entropy"] > 0 for r in train)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert int(state["method"]["updates"]) == 3  # after_step ran once per step, saved with the run
    lrs = [g["lr"] for g in state["optimizer"]["param_groups"]]
    # each group decays from its own base lr: the same float64 poly factor times each base, a few roundings apart
    assert lrs[1] == pytest.approx(lrs[0] / 10, rel=4 * EPS64)
    # the representation head reads into no loss: frozen, so data parallelism needs no unused-parameter search
    assert not any(p.requires_grad for p in trainer.nets["student"].representation.parameters())
    # resuming restores the method's own state
    resumed = Trainer(load_config(None, tiny_overrides(demo_root, out, method="entropy", iterations=4)),
                      resume="auto")
    assert int(resumed.method.updates) == 3
    resumed.fit()
    assert int(load_checkpoint(out / "checkpoints" / "last.pt")["method"]["updates"]) == 4


# --------------------------------------------------------------------------------------------
# the Method interface's promises (prcl.methods.base), for every registered method
# --------------------------------------------------------------------------------------------

# One tiny step: resnet18 at 32 px, 2 + 2 images, 3 classes. Thresholds such that every loss term of every method
# takes part in the first step (pseudo-labels and contrast pixels at any confidence, anchors below 0.9); global
# prototypes on, so that PRCL carries state across steps and the state round trip restores something.
CONTRACT_OVERRIDES = ["data.num_classes=3", "prcl.num_queries=8", "prcl.num_negatives=16", "prcl.kernel=chunked",
                      "method.strong_scale_range=[1.0,1.0]", "method.un_threshold=0.0", "method.weak_threshold=0.0",
                      "method.strong_threshold=0.9", "prcl.global_prototypes=true"]
CONTRACT_SIZE = 32


def _contract_method(name: str) -> tuple[Method, dict]:
    """The method registered as ``name`` and its networks around a fresh resnet18 student (seeded)."""
    torch.manual_seed(0)
    method = build_method(load_config(None, [f"method.name={name}", *CONTRACT_OVERRIDES]))
    return method, method.build_networks(build_segmenter("resnet18", num_classes=3).train())


def _contract_batch(method: Method, seed: int = 0, step: int = 0, probe: bool = False, masks: bool = False,
                    unlabeled_seed: int | None = None) -> StepInput:
    """What the trainer gives a step: unlabeled images only to a method that reads them, their masks only at probe
    steps (``masks``), a fresh generator for the method's own draws."""
    g = torch.Generator().manual_seed(seed)
    size = (CONTRACT_SIZE, CONTRACT_SIZE)
    labeled, labels = torch.randn(2, 3, *size, generator=g), torch.randint(0, 3, (2, *size), generator=g)
    u = torch.Generator().manual_seed(seed + 1 if unlabeled_seed is None else unlabeled_seed)
    unlabeled, truth = torch.randn(2, 3, *size, generator=u) + 0.5, torch.randint(-1, 3, (2, *size), generator=u)
    return StepInput(labeled_images=labeled, labels=labels,
                     unlabeled_images=unlabeled if method.uses_unlabeled else None, step=step,
                     generator=torch.Generator().manual_seed(100 + seed), probe=probe,
                     unlabeled_masks=truth if masks and method.uses_unlabeled else None)


def _trained(nets: dict) -> list[torch.nn.Parameter]:
    return [p for net in nets.values() for p in net.parameters() if p.requires_grad]


def _step_with_gradients(method: Method, nets: dict, batch: StepInput) -> tuple[dict, list[torch.Tensor | None]]:
    """One train_step and its backward pass on copies of the method (its state: PRCL's global prototypes change at
    each step) and of the networks: (the returned values, every trained parameter's gradient)."""
    method, nets = copy.deepcopy(method), copy.deepcopy(nets)
    losses = method.train_step(nets, batch)
    losses["loss"].backward()
    return losses, [p.grad for p in _trained(nets)]


def _same_step(a: tuple[dict, list], b: tuple[dict, list]) -> None:
    """The same loss and gradients, bit for bit (the same code on the same machine)."""
    assert torch.equal(a[0]["loss"], b[0]["loss"]), (a[0]["loss"].item(), b[0]["loss"].item())
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


class TestMethodContract:
    """What prcl.methods.base promises the trainer about any method; a newly registered method is tested too."""

    @pytest.fixture(params=sorted(METHODS))
    def name(self, request) -> str:
        return request.param

    def test_the_registry_name_is_the_method_name(self, name):
        assert issubclass(METHODS[name], Method) and METHODS[name].name == name
        assert isinstance(METHODS[name].uses_unlabeled, bool) and isinstance(METHODS[name].uses_representation, bool)

    def test_networks_are_built_around_the_given_student(self, name):
        method, _ = _contract_method(name)
        student = build_segmenter("resnet18", num_classes=3)
        nets = method.build_networks(student)
        assert nets["student"] is student and all(isinstance(net, torch.nn.Module) for net in nets.values())
        # the representation head is trained exactly when a loss reads it
        assert all(p.requires_grad == method.uses_representation for p in student.representation.parameters())
        # a teacher, where there is one, is never trained
        assert "teacher" not in nets or not any(p.requires_grad for p in nets["teacher"].parameters())

    def test_optimiser_groups_hold_each_trained_parameter_once(self, name):
        method, nets = _contract_method(name)
        groups = method.optimizer_groups(nets)
        assert all(set(group) == {"name", "params", "lr"} and group["lr"] > 0 for group in groups)
        assert len({group["name"] for group in groups}) == len(groups)
        grouped = [id(p) for group in groups for p in group["params"]]
        assert len(grouped) == len(set(grouped))  # no parameter twice
        assert set(grouped) == {id(p) for p in _trained(nets)}  # every trained one, nothing frozen

    def test_a_step_returns_a_finite_loss_with_its_graph_and_scalar_logged_values(self, name):
        method, nets = _contract_method(name)
        losses = method.train_step(nets, _contract_batch(method, probe=True, masks=True))
        loss = losses["loss"]
        assert loss.dim() == 0 and loss.requires_grad and bool(torch.isfinite(loss))
        for key, value in losses.items():  # the trainer stacks the tensors into one list of floats
            if key != "loss" and value is not None:
                assert isinstance(value, float) or (value.dim() == 0 and not value.requires_grad), key
                assert math.isfinite(float(value)), key

    def test_every_trained_parameter_receives_a_finite_gradient(self, name):
        """(so data parallelism needs no search for unused parameters)"""
        method, nets = _contract_method(name)
        _, gradients = _step_with_gradients(method, nets, _contract_batch(method))
        assert len(gradients) == len(_trained(nets))
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in gradients)

    def test_only_the_optimiser_changes_the_parameters(self, name):
        method, nets = _contract_method(name)
        parameters = [p for net in nets.values() for p in net.parameters()]
        before = [p.detach().clone() for p in parameters]
        method.train_step(nets, _contract_batch(method))["loss"].backward()
        assert all(torch.equal(p, q) for p, q in zip(parameters, before))

    def test_the_probe_adds_logged_values_and_changes_nothing_else(self, name):
        method, nets = _contract_method(name)
        plain = _step_with_gradients(method, nets, _contract_batch(method))
        probed = _step_with_gradients(method, nets, _contract_batch(method, probe=True))
        assert set(plain[0]) <= set(probed[0])
        _same_step(plain, probed)

    def test_the_unlabeled_ground_truth_is_never_trained_on(self, name):
        method, nets = _contract_method(name)
        without = _step_with_gradients(method, nets, _contract_batch(method, probe=True))
        given = _step_with_gradients(method, nets, _contract_batch(method, probe=True, masks=True))
        assert set(without[0]) <= set(given[0])
        _same_step(without, given)

    def test_unlabeled_images_are_read_as_declared(self, name):
        method, nets = _contract_method(name)
        batch = _contract_batch(method)
        if method.uses_unlabeled:  # other unlabeled images, another loss
            other = _contract_batch(method, unlabeled_seed=7)
            a, b = (_step_with_gradients(method, nets, x)[0]["loss"] for x in (batch, other))
            assert not torch.equal(a, b)
        else:  # the trainer loads none: a step with them is the step without them
            given = dataclasses.replace(batch, unlabeled_images=torch.randn(2, 3, CONTRACT_SIZE, CONTRACT_SIZE))
            _same_step(_step_with_gradients(method, nets, batch),
                       _step_with_gradients(method, nets, given))

    def test_the_random_draws_come_from_the_batch_generator(self, name):
        """Whatever the global random state, the same generator gives the same step (what resuming relies on)."""
        method, nets = _contract_method(name)
        steps = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            steps.append(_step_with_gradients(method, nets, _contract_batch(method)))
        _same_step(*steps)

    def test_after_step_leaves_the_trained_networks_and_moves_the_others_towards_the_student(self, name):
        method, nets = _contract_method(name)
        with torch.no_grad():  # an optimiser step: the trained parameters move
            for parameter in _trained(nets):
                parameter.add_(0.01 * torch.randn_like(parameter))
        before = {key: {k: v.clone() for k, v in net.state_dict().items()} for key, net in nets.items()}
        method.after_step(nets, step=5)
        student = dict(nets["student"].named_parameters())
        for key, net in nets.items():
            changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[key][k])]
            if any(p.requires_grad for p in net.parameters()):
                assert not changed, (key, changed[:3])
            elif changed:  # an EMA teacher: every parameter at most as far from the student's as before, nearer overall
                distances = [((before[key][k] - student[k]).norm(), (p - student[k]).norm())
                             for k, p in net.named_parameters()]
                assert all(after <= old for old, after in distances), key
                assert sum(after for _, after in distances) < sum(old for old, _ in distances), key

    def test_the_evaluated_network_is_one_of_the_networks_unwrapped(self, name):
        method, nets = _contract_method(name)
        wrapped = {key: torch.nn.DataParallel(net) if any(p.requires_grad for p in net.parameters()) else net
                   for key, net in nets.items()}  # as the trainer wraps the trained ones for data parallelism
        network = method.eval_network(wrapped)
        assert any(network is unwrap_model(net) for net in wrapped.values())  # saved with its network, by name
        assert not isinstance(network, torch.nn.DataParallel)
        with torch.no_grad():
            logits = network.eval()(torch.randn(2, 3, CONTRACT_SIZE, CONTRACT_SIZE)).logits
        assert logits.shape[:2] == (2, 3)

    def test_state_survives_a_checkpoint_and_gives_the_same_next_step(self, name, tmp_path):
        method, nets = _contract_method(name)
        for step in range(2):
            method.train_step(nets, _contract_batch(method, seed=step, step=step))
            method.after_step(nets, step)
        state = method.state_dict()
        assert all(isinstance(value, torch.Tensor) for value in state.values())
        save_checkpoint(tmp_path / "state.pt", {"method": state})  # written as the trainer writes it
        saved = load_checkpoint(tmp_path / "state.pt")["method"]
        restored = build_method(method.cfg)
        restored.load_state_dict(saved)
        assert set(restored.state_dict()) == set(saved)
        assert all(torch.equal(restored.state_dict()[key], value) for key, value in saved.items())
        def next_loss(chosen: Method) -> torch.Tensor:
            return chosen.train_step(copy.deepcopy(nets), _contract_batch(method, seed=2, step=2))["loss"]

        after = next_loss(method)
        assert torch.equal(next_loss(restored), after)
        if saved:  # the state matters: a method without it takes another step
            assert not torch.equal(next_loss(build_method(method.cfg)), after)

    def test_a_step_under_bf16_autocast_gives_float32_losses_and_gradients(self, name):
        """(train.amp: the losses are computed in float32, the scaler and the optimiser get float32 gradients)"""
        method, nets = _contract_method(name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = method.train_step(nets, _contract_batch(method, probe=True))
        assert all(value.dtype == torch.float32 for value in losses.values() if isinstance(value, torch.Tensor))
        losses["loss"].backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in _trained(nets))

    def test_the_trainer_finds_the_networks_by_the_method_names(self, name, demo_root, tmp_path):
        from prcl.engine.trainer import Trainer
        from tiny_run import tiny_config

        trainer = Trainer(tiny_config(demo_root, tmp_path / name, method=name, iterations=1))
        assert trainer.eval_network() is trainer.method.eval_network(trainer.nets)
        head = trainer.probability_head_network()
        assert head is (unwrap_model(trainer.nets["probability_head"]) if "probability_head" in trainer.nets else None)
        if head is not None:  # a variance in (0, 1) per dimension of the representation, from the evaluated network
            with torch.no_grad():
                out = trainer.eval_network().eval()(torch.randn(2, 3, CONTRACT_SIZE, CONTRACT_SIZE))
                variance = head.eval()(out.features)
            assert variance.shape == out.mu.shape and bool(((variance > 0) & (variance < 1)).all())
        # every network saved under its name, with the method's own state
        state = trainer.state_dict()
        assert all(state[key].keys() == unwrap_model(net).state_dict().keys() for key, net in trainer.nets.items())
        assert state["method"].keys() == trainer.method.state_dict().keys()


def test_the_config_accepts_the_registered_methods_in_their_order():
    """``prcl.config.METHOD_NAMES`` (torch-free, read by every config) lists the registry's names."""
    assert tuple(METHODS) == METHOD_NAMES


def test_unknown_method_is_refused_with_the_registered_names():
    expected = re.escape(f"'method.name' must be one of {', '.join(METHODS)}, got 'entropy'")
    with pytest.raises(UserError, match=expected):
        load_config(None, ["method.name=entropy"])


# --------------------------------------------------------------------------------------------
# which pixels each loss uses, on a hand-made case
# --------------------------------------------------------------------------------------------


def test_contrast_mask_keeps_labeled_pixels_and_confident_pseudo_labels():
    # one labeled image, two strong views; 1 x 3 maps
    labels = torch.tensor([[[0, -1, 2]],       # labeled: the middle pixel is ignore
                           [[1, 1, -1]],       # strong view 1: the last pixel was cut out by the mix
                           [[2, 0, 0]]])       # strong view 2
    confidence = torch.tensor([[[0.9, 0.69, 0.99]],
                               [[0.7, 0.2, 1.0]]])
    valid = contrast_mask(labels, confidence, weak_threshold=0.7)
    expected = torch.tensor([[[True, False, True]],    # labels alone decide on labeled images
                             [[True, False, False]],   # 0.69 < 0.7; the cut-out pixel stays out at 0.99
                             [[True, False, True]]])   # exactly 0.7 passes, 0.2 does not
    assert torch.equal(valid, expected)


def test_pseudo_label_and_supervised_losses_count_only_their_pixels():
    from prcl.losses import pseudo_label_loss

    # two classes, 1 x 4 image; logits favour class 0 everywhere with log-odds log 3 (p = 0.75)
    logits = torch.log(torch.tensor([0.75, 0.25]))[None, :, None, None].expand(1, 2, 1, 4).clone()
    pseudo = torch.tensor([[[0, 1, 0, -1]]])
    confidence = torch.tensor([[[0.98, 0.99, 0.5, 0.0]]])
    # confident pixels (q >= 0.97) among those with a pseudo-label: 2 of 3 -> weight 2/3; cross-entropy
    # over the pixels with ce > 0 (all three labeled): (-log .75 - log .25 - log .75) / 3
    ce = (-2 * math.log(0.75) - math.log(0.25)) / 3
    # float32 against float64: an (identity) upsampling of 4 weights, a softmax over 2 classes, 3 positive pixel
    # terms weighted, summed and divided: 4 + 2 + 3 + 5 roundings of the loss
    rounding = summation_bound(1.0, 4 + 2 + 3 + 5)
    loss = float(pseudo_label_loss(logits, pseudo, confidence, threshold=0.97))
    assert loss == pytest.approx(2 / 3 * ce, rel=rounding)
    labels = torch.tensor([[-1, 1, -1, 0]])[:, None, :].expand(1, 1, 4)
    expected = (-math.log(0.25) - math.log(0.75)) / 2  # the two labeled pixels only
    assert float(supervised_loss(logits, labels)) == pytest.approx(expected, rel=rounding)  # (the same steps, 2 pixels)
