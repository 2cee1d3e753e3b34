"""Templates from configuration: sandbox limits (defaults, sizes with units, every refusal
naming the key), as users write them in KERNELCUBE_TEMPLATES."""

from __future__ import annotations

import pytest

from kernel_gateway_ext.templates import GiB, Limits, MiB, Template, TemplateError, load_templates


def test_default_limits_suit_a_shared_machine():
    limits = load_templates({}, 2)["default"].limits
    assert limits == Limits(memory=2 * GiB, processes=256, cpus=1.0, disk=1 * GiB, tmp=256 * MiB, shm=64 * MiB)


def test_limits_accept_sizes_with_units():
    template = Template.from_config("big", {"limits": {"memory": "8G", "disk": "512MiB", "tmp": 1048576,
                                                       "cpus": 2, "processes": 1000}})
    assert template.limits.memory == 8 * GiB and template.limits.disk == 512 * MiB
    assert template.limits.tmp == MiB and template.limits.cpus == 2.0 and template.limits.processes == 1000
    assert template.limits.shm == 64 * MiB  # unset keys keep their defaults


@pytest.mark.parametrize("limits, wording", [
    ({"memory": "lots"}, "'lots' is not a size"),
    ({"memory": -1}, "not a positive size"),
    ({"disk": True}, "not a size"),
    ({"processes": 2}, "limits.processes must be an integer >= 8"),
    ({"cpus": "two"}, "limits.cpus must be a number"),
    ({"swap": "1G"}, "unknown limits ['swap']"),
    ("2G", "limits must be a mapping"),
])
def test_bad_limits_are_refused_with_the_reason(limits, wording):
    with pytest.raises(TemplateError) as info:
        Template.from_config("t", {"limits": limits})
    assert "template 't'" in str(info.value) and wording in str(info.value)
