"""fast_frozen_init builds the same objects as the dataclass-generated __init__."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.backend import BatchShape
from kvsched.decision import Decision, View
from kvsched.fastinit import fast_frozen_init


def twin(cls):
    """The same fields in a plain frozen slotted dataclass (the generated __init__)."""
    spec = []
    for f in dataclasses.fields(cls):
        kw = {}
        if f.default is not dataclasses.MISSING:
            kw["default"] = f.default
        if f.default_factory is not dataclasses.MISSING:
            kw["default_factory"] = f.default_factory
        spec.append((f.name, f.type, dataclasses.field(**kw)))
    return dataclasses.make_dataclass("Twin" + cls.__name__, spec, frozen=True, slots=True)


values = st.one_of(st.integers(-5, 5), st.none(), st.dictionaries(st.integers(0, 3), st.integers(1, 3)),
                   st.tuples(st.integers(0, 9)), st.floats(allow_nan=False))


@pytest.mark.parametrize("cls", [View, Decision, BatchShape])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fast_init_equals_the_generated_init(cls, data):
    fields = dataclasses.fields(cls)
    required = sum(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    n = data.draw(st.integers(required, len(fields)))
    args = data.draw(st.lists(values, min_size=n, max_size=n))
    # the rest, some by keyword
    kw = {f.name: data.draw(values) for f in fields[n:] if data.draw(st.booleans())}
    # fast_frozen_init on a twin: the compiled core (kvsched.compiled) builds these classes
    # without it, the pure-Python package with it; both must equal the generated __init__.
    got, want = fast_frozen_init(twin(cls))(*args, **kw), twin(cls)(*args, **kw)
    assert dataclasses.astuple(got) == dataclasses.astuple(want)
    assert [type(getattr(got, f.name)) for f in fields] == [type(getattr(want, f.name)) for f in fields]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(got, fields[0].name, 1)


def test_default_factories_give_a_fresh_object_each_time():
    spec = [("x", int), ("items", list, dataclasses.field(default_factory=list))]
    cls = fast_frozen_init(dataclasses.make_dataclass("WithFactory", spec, frozen=True, slots=True))
    a, b = cls(1), cls(1)
    assert a.items == [] and a.items is not b.items and cls(1, [2]).items == [2]
    with pytest.raises(TypeError):
        BatchShape(1, 2)  # required fields stay required
    with pytest.raises(TypeError):
        fast_frozen_init(dataclasses.make_dataclass("Plain", [("x", int)]))  # not frozen: refused


def test_empty_defaults_are_one_immutable_mapping():
    """Decision.run and View.block_counts default to NO_ENTRIES, not a dict per object (a
    default_factory costs the compiled core an import per construction): so it must read as
    an empty dict and refuse writes."""
    import pickle

    from kvsched.decision import NO_ENTRIES

    a = Decision()
    assert a.run is NO_ENTRIES and a.run == {} and Decision(run={}) == a and repr(a.run) == "{}"
    assert not a.run and a.run.get(3, 0) == 0 and 3 not in a.run and dict(a.run.items()) == {}
    with pytest.raises(TypeError):
        a.run[3] = 1  # type: ignore[index]
    with pytest.raises(KeyError):
        a.run[3]
    assert pickle.loads(pickle.dumps(a)).run is NO_ENTRIES
    view = View(0.0, 0, {}, {}, [], [], 4, 4, 16, False)
    assert view.block_counts is NO_ENTRIES and view.blocks_freed_by(7) == 0
