"""The option objects, and the keyword shortcuts the API sorts into them."""

import pytest

import onnxprune
from onnxprune import Budget, DataSpec, InputError, OutputOptions, RuntimeOptions, SelectionConfig
from onnxprune.options import resolve
from onnxprune.report import SETTINGS_ORDER
from conftest import make_mlp, random_inputs


def test_keywords_and_objects_prune_alike(tmp_path):
    model = make_mlp([6, 16, 8, 3], dead={0: [0, 3]})
    feeds = random_inputs(model, n=60)
    by_keywords = onnxprune.prune(model, feeds, fraction=0.25, compensation="fold", batch_size=16, threads=1,
                                  output=tmp_path / "a.onnx")
    by_objects = onnxprune.prune(model, DataSpec(feeds, batch_size=16),
                                 selection=SelectionConfig(fraction=0.25, compensation="fold"),
                                 runtime=RuntimeOptions(threads=1), output=OutputOptions(tmp_path / "b.onnx"))
    a, b = by_keywords.report, by_objects.report
    assert a.settings == b.settings and a.written and b.written
    assert [(g.neurons_before, g.neurons_after) for g in a.groups] == [(g.neurons_before, g.neurons_after)
                                                                       for g in b.groups]


def test_settings_come_from_the_objects_in_the_reports_order():
    model = make_mlp([6, 16, 8, 3])
    result = onnxprune.prune(model, random_inputs(model, n=60), max_drop=2.0, mask=None)
    settings = result.report.settings
    config = SelectionConfig.from_options(max_drop=2.0).for_model(0)
    expected = {**config.to_dict(), **DataSpec(None).to_dict()}
    assert set(settings) == set(expected) | {"data", "samples", "criterion_chosen"}  # auto says what it took
    assert [k for k in settings if k in SETTINGS_ORDER] == [k for k in SETTINGS_ORDER if k in settings]
    assert settings["max_drop"] == 2.0 and settings["confidence"] == 0.95  # budget mode (or its fallback)


def test_an_unknown_keyword_names_the_objects():
    with pytest.raises(TypeError, match=r"'max_dorp' \(did you mean 'max_drop'\?\).*selection=SelectionConfig"):
        resolve("prune", "d.npz", {"max_dorp": 1})
    with pytest.raises(TypeError, match=r"statistics\(model, DataSpec\(data, ...\), runtime=RuntimeOptions"):
        resolve("statistics", "d.npz", {"fraction": 0.1}, kinds=("data", "runtime"))


def test_keywords_refine_objects_but_not_a_selection_config():
    options = resolve("prune", DataSpec("d.npz", batch_size=8, mask="m"), {"batch_size": 16, "workers": 2,
                                                                           "options": RuntimeOptions(threads=3)})
    assert (options.data.data, options.data.batch_size, options.data.mask) == ("d.npz", 16, "m")
    assert (options.runtime.threads, options.runtime.workers) == (3, 2)
    config = SelectionConfig(budget=Budget(max_drop=1.0))
    assert resolve("prune", "d.npz", {"config": config}).selection is config
    with pytest.raises(InputError, match="either config= or the options max_drop"):
        resolve("prune", "d.npz", {"max_drop": 2.0}, selection=config)


def test_keywords_build_the_selection_as_the_cli_does():
    config = resolve("prune", "d.npz", {"mean_threshold": 0.1, "structures": "neurons", "outputs": ["y"]}).selection
    assert (config.criterion, config.mode, config.structures, config.outputs) == ("seed", "thresholds",
                                                                                 ("neurons",), ("y",))
    with pytest.raises(InputError, match="set the seed criterion"):
        resolve("prune", "d.npz", {"std_threshold": 0.1, "criterion": "apoz"})
    with pytest.raises(InputError, match="fraction must be in"):
        resolve("prune", "d.npz", {"fraction": 1.5})
