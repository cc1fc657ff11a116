import pytest

from fusebench.core.errors import UsageError
from fusebench.core.registry import Registry


def test_unknown_name_suggests_closest_and_lists_all():
    reg: Registry[int] = Registry("strategy")
    for i, name in enumerate(["concat", "gmu", "logit_mean"]):
        reg.add(name, i)
    with pytest.raises(UsageError) as err:
        reg.get("conact")
    msg = str(err.value)
    assert "unknown strategy 'conact'" in msg
    assert "Did you mean 'concat'?" in msg
    assert "Available: concat, gmu, logit_mean" in msg


def test_duplicate_registration_is_an_error():
    reg: Registry[int] = Registry("metric")
    reg.add("accuracy", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("accuracy", 2)


def test_names_sorted_and_contains():
    reg: Registry[int] = Registry("x")
    reg.add("b", 1)
    reg.add("a", 2)
    assert reg.names() == ["a", "b"] and "a" in reg and "c" not in reg and len(reg) == 2
