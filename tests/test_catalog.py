"""The zoo's one catalogue and naming convention: ``<arch>`` / ``<arch>_<variant>`` registry names, the old names
as deprecated aliases (resolved to the same builder, a DeprecationWarning once), the shared ratio helper."""

import warnings

import pytest

from classification.catalog import CATALOG, VARIANTS, registry_name, variant_names
from classification.models import _registry
from classification.models import DEPRECATED_NAMES, get_model, is_model, list_models, resolve_name


def test_every_catalogue_arch_resolves_in_all_three_variants():
    current = list_models(include_deprecated=False)
    for arch, entry in CATALOG.items():
        assert set(entry.names) == set(VARIANTS)
        for variant in VARIANTS:
            name = registry_name(arch, variant)
            assert name == (arch if variant == "original" else f"{arch}_{variant}")  # the one convention
            assert name in current and is_model(name)
            assert _registry.BUILTIN_MODELS[name].__name__ == name
    # and nothing registered lies outside the catalogue
    assert sorted(n for a in CATALOG for n in variant_names(a).values()) == current


def test_unknown_arch_or_variant_is_named():
    with pytest.raises(ValueError, match="unknown architecture 'resnet18'.*resnet34"):
        variant_names("resnet18")
    with pytest.raises(ValueError, match="unknown variant 'fused'"):
        registry_name("resnet34", "fused")


def test_listing_shows_current_names_only():
    current = list_models()
    assert not set(current) & set(DEPRECATED_NAMES)
    assert list_models(include_deprecated=True) == current + sorted(DEPRECATED_NAMES)
    assert all(is_model(old) for old in DEPRECATED_NAMES)  # the old names stay accepted
    with pytest.raises(ValueError, match="valid names: ") as e:
        get_model("resnet18")
    assert "resnet34_dero" in str(e.value) and "resnet34dero" not in str(e.value)


@pytest.mark.parametrize("old, new", sorted(DEPRECATED_NAMES.items()))
def test_alias_resolves_to_the_same_builder_and_warns_once(old, new, monkeypatch):
    monkeypatch.setattr(_registry, "_warned", set())
    assert new in list_models(include_deprecated=False) and is_model(old)
    with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated, use '{new}'"):
        assert resolve_name(old) == new
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_name(old) == new  # once per name
        assert resolve_name(new) == new
    builder = _registry.BUILTIN_MODELS[new]
    calls = []
    monkeypatch.setitem(_registry.BUILTIN_MODELS, new, lambda **kw: calls.append(kw) or builder)
    assert get_model(old, num_classes=7, style="rep") is builder and calls == [{"num_classes": 7, "style": "rep"}]


def test_alias_builds_the_same_network(monkeypatch):
    monkeypatch.setattr(_registry, "_warned", set())
    with pytest.warns(DeprecationWarning):
        old = get_model("mcunet_dero_v4", num_classes=10, style="rep")
    new = get_model("mcunet_v4_dero", num_classes=10, style="rep")
    assert {k: v.shape for k, v in old.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}


def test_deprecated_name_cannot_be_registered_again():
    with pytest.raises(ValueError, match="already registered"):
        _registry.register_model("resnet34dero")(lambda num_classes=1000: None)


def test_old_spec_with_style_still_loads():
    from yolo_dero.catalog import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model, name = load_model("mcunet_dero_v4:rep")
    ref, _ = load_model("mcunet_v4_dero:rep")
    assert name == "mcunet_dero_v4:rep" and type(model) is type(ref)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


def test_ratios_one_helper():
    from yolo_dero.benchmark import ratio_rows, ratios

    rows = {"plain": {"a": 2, "n": {"b": 4}, "z": 0}, "dero": {"a": 3, "n": {"b": 2}, "z": 5}, "original": {"a": 1}}
    t = ratios(rows, ["a", "n.b", "z", "missing"])
    assert t == {"dero/plain": {"a": 1.5, "n.b": 0.5, "z": None, "missing": None},
                 "dero/original": {"a": 3.0, "n.b": None, "z": None, "missing": None}}
    assert ratios(rows, ["a"], pairs=[("original", "plain")], digits=None) == {"original/plain": {"a": 0.5}}
    assert ratio_rows(rows, [("a", "A", "goal")]) == [["A", "goal", 1.5, 3.0]]
