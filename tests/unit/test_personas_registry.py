"""The registry on a fake engine: locks, leases, atomic swap, LRU eviction, delete, watching."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from loragate.adapters.errors import PersonaUnavailableError, UnknownModelError
from loragate.adapters.registry import PersonaRegistry
from loragate.adapters.sources import personas_running
from loragate.adapters.targets import ModelTarget
from tests.unit.personas_support import (
    BASE,
    DEEP,
    CountingEngine,
    make_registry,
    make_settings,
    write_adapter,
    write_bundle,
    write_model_dir,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "adapters"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return write_model_dir(tmp_path / "model")


@pytest.fixture
def engine() -> CountingEngine:
    return CountingEngine()


def registry_with(
    root: Path, engine: CountingEngine, model_dir: Path, **kw: object
) -> PersonaRegistry:
    return make_registry(make_settings(root, **kw), engine, model_dir)


@pytest.fixture
def registry(root: Path, engine: CountingEngine, model_dir: Path) -> PersonaRegistry:
    return registry_with(root, engine, model_dir)


async def held(registry: PersonaRegistry, name: str, stack: AsyncExitStack) -> ModelTarget:
    """A lease kept open until `stack` closes: a request still being generated."""
    return await stack.enter_async_context(registry.lease(name))


async def test_two_simultaneous_first_uses_load_once(
    registry: PersonaRegistry, engine: CountingEngine, root: Path
) -> None:
    await registry.put("p", write_adapter(root / "p"), source="api", load=False)
    assert registry.get("p").state == "registered"

    async def use() -> ModelTarget:
        async with registry.lease("p") as target:
            return target

    first, second = await asyncio.gather(use(), use())
    assert first.adapter is not None and first.adapter == second.adapter
    assert engine.add_calls == [first.adapter.int_id]
    assert registry.get("p").state == "loaded"


async def test_lease_counts_requests_and_in_flight(registry: PersonaRegistry, root: Path) -> None:
    await registry.put("p", write_adapter(root / "p"), source="api", load=True)
    async with registry.lease("p") as target:
        assert target.name == "p"
        assert registry.get("p").in_flight == 1
    info = registry.get("p").info()
    assert (info.in_flight, info.requests_served) == (0, 1)
    assert info.last_used is not None and info.load_time_s is not None


async def test_leases_of_different_personas_do_not_wait_for_each_other(
    registry: PersonaRegistry, root: Path
) -> None:
    for name in ("a", "b"):
        await registry.put(name, write_adapter(root / name), source="api", load=False)
    async with AsyncExitStack() as stack:
        await held(registry, "a", stack)  # a long generation on persona a
        target = await asyncio.wait_for(held(registry, "b", stack), timeout=2)
        assert target.name == "b"


async def test_swap_serves_new_requests_the_new_version_and_drains_the_old(
    registry: PersonaRegistry, engine: CountingEngine, root: Path
) -> None:
    _, created = await registry.put("p", write_bundle(root / "v1"), source="api", load=True)
    assert created
    async with AsyncExitStack() as old_request:
        old = await held(registry, "p", old_request)
        new_version, created = await registry.put(
            "p", write_bundle(root / "v2", version="2"), source="api", load=True
        )
        assert not created
        async with registry.lease("p") as new:
            assert new.adapter == new_version.adapter != old.adapter
        assert old.adapter is not None and new.adapter is not None
        await asyncio.sleep(0.05)
        assert old.adapter.int_id in engine.adapters  # its request is still running
    await registry.drained()
    assert set(engine.adapters) == {new.adapter.int_id}
    assert registry.get("p").version == "2"


async def test_name_at_version_pins_the_current_version(
    registry: PersonaRegistry, root: Path
) -> None:
    await registry.put("p", write_bundle(root / "v1", version="1"), source="api", load=True)
    async with registry.lease("p@1") as target:
        assert target.name == "p"
    await registry.put("p", write_bundle(root / "v2", version="2"), source="api", load=True)
    with pytest.raises(UnknownModelError) as err:
        async with registry.lease("p@1"):
            pass
    assert "p@2" in err.value.message


async def test_lru_evicts_the_least_recently_used_idle_persona(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    registry = registry_with(root, engine, model_dir, max_cpu_loras=2)
    ids = {}
    for name in ("a", "b", "c"):
        persona, _ = await registry.put(name, write_adapter(root / name), source="api", load=False)
        assert persona.adapter is not None
        ids[name] = persona.adapter.int_id
    for name in ("a", "b", "a", "c"):  # a is used again after b: b is the least recent
        async with registry.lease(name):
            pass
    assert set(engine.adapters) == {ids["a"], ids["c"]}
    assert registry.get("b").state == "registered"
    async with registry.lease("b"):
        pass
    assert set(engine.adapters) == {ids["c"], ids["b"]}
    assert engine.add_calls.count(ids["b"]) == 2


async def test_a_version_moves_through_its_states(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    registry = registry_with(root, engine, model_dir, max_cpu_loras=1)
    v1, _ = await registry.put("p", write_bundle(root / "v1"), source="api", load=False)
    await registry.put("q", write_adapter(root / "q"), source="api", load=False)
    seen = [v1.state]
    async with registry.lease("p"):
        seen.append(v1.state)
    async with registry.lease("q"):  # room for one: p is evicted
        seen.append(v1.state)
    await registry.put("p", write_bundle(root / "v2", version="2"), source="api", load=False)
    seen.append(v1.state)
    assert seen == ["registered", "loaded", "registered", "retired"]
    await registry.delete("q")
    with pytest.raises(RuntimeError, match="retired -> loading"):  # a retired version stays so
        v1.start_loading()


async def test_a_persona_in_use_is_never_evicted(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    registry = registry_with(root, engine, model_dir, max_cpu_loras=1)
    for name in ("a", "b"):
        await registry.put(name, write_adapter(root / name), source="api", load=False)
    async with AsyncExitStack() as stack:
        a = await held(registry, "a", stack)
        async with registry.lease("b") as b:
            assert a.adapter is not None and b.adapter is not None
            assert {a.adapter.int_id, b.adapter.int_id} <= set(engine.adapters)


async def test_delete_waits_for_requests_in_flight_then_frees_the_engine(
    registry: PersonaRegistry, engine: CountingEngine, root: Path
) -> None:
    await registry.put("p", write_adapter(root / "p"), source="api", load=True)
    stack = AsyncExitStack()
    target = await held(registry, "p", stack)
    assert target.adapter is not None
    deleting = asyncio.create_task(registry.delete("p"))
    await asyncio.sleep(0.05)
    assert not deleting.done()
    assert target.adapter.int_id in engine.adapters
    with pytest.raises(UnknownModelError):  # new requests see it gone at once
        async with registry.lease("p"):
            pass
    await stack.aclose()
    await asyncio.wait_for(deleting, timeout=2)
    assert engine.adapters == {}
    assert engine.remove_calls == [target.adapter.int_id]


async def test_refused_load_leaves_registry_and_engine_as_they_were(
    registry: PersonaRegistry, engine: CountingEngine, root: Path
) -> None:
    v1, _ = await registry.put("p", write_bundle(root / "v1"), source="api", load=True)
    before = dict(engine.adapters)
    engine.refuse.update({"p", "q"})
    with pytest.raises(PersonaUnavailableError) as err:
        await registry.put("p", write_bundle(root / "v2", version="2"), source="api", load=True)
    assert "refused by the test" in err.value.message
    with pytest.raises(PersonaUnavailableError):
        await registry.put("q", write_adapter(root / "q"), source="api", load=True)
    assert registry.get("p") is v1 and registry.get("p").state == "loaded"
    assert registry.find("q") is None
    assert engine.adapters == before


async def test_failed_lazy_load_is_reported_and_not_retried(
    registry: PersonaRegistry, engine: CountingEngine, root: Path
) -> None:
    engine.refuse.add("p")
    await registry.put("p", write_adapter(root / "p"), source="api", load=False)
    for _ in range(2):
        with pytest.raises(PersonaUnavailableError):
            async with registry.lease("p"):
                pass
    assert len(engine.add_calls) == 1
    info = registry.get("p").info()
    assert info.state == "failed" and "refused by the test" in (info.error or "")
    assert "p" not in registry.names()


async def test_unknown_name_is_404_listing_the_valid_ones(
    registry: PersonaRegistry, root: Path
) -> None:
    await registry.put("alpha", write_adapter(root / "alpha"), source="api", load=False)
    with pytest.raises(UnknownModelError) as err:
        async with registry.lease("nope"):
            pass
    assert "alpha" in err.value.message and BASE in err.value.message
    async with registry.lease(BASE) as base:
        assert base.adapter is None


async def test_model_cards_list_personas_under_the_base_model(
    registry: PersonaRegistry, root: Path
) -> None:
    persona, _ = await registry.put("p", write_adapter(root / "p"), source="api", load=False)
    cards = {card.id: card.model_dump() for card in registry.model_cards()}
    assert cards[BASE]["parent"] is None
    assert cards["p"]["parent"] == BASE
    assert persona.adapter is not None and cards["p"]["root"] == persona.adapter.path


async def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def watching(
    root: Path, engine: CountingEngine, model_dir: Path
) -> AsyncIterator[tuple[PersonaRegistry, Path]]:
    # Not an async fixture: those run on the session's event loop, the test on its own.
    personas_dir = root / "personas"
    write_bundle(personas_dir / "first", system_prompt="I am first.")
    settings = make_settings(root, personas_dir=[personas_dir], persona_watch_interval=0.05)
    registry = make_registry(settings, engine, model_dir)
    async with personas_running(registry, settings):
        yield registry, personas_dir


async def test_scan_at_start_then_watch_for_new_changed_and_removed_bundles(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    async with watching(root, engine, model_dir) as (registry, personas_dir):
        assert registry.get("first").system_prompt == "I am first."
        write_bundle(personas_dir / "second", version="1")
        await wait_until(lambda: registry.find("second") is not None)
        write_bundle(personas_dir / "second", version="2")
        await wait_until(lambda: registry.get("second").version == "2")
        shutil.rmtree(personas_dir / "first")
        await wait_until(lambda: registry.find("first") is None)


async def test_watched_bundle_that_does_not_validate_is_listed_as_failed(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    async with watching(root, engine, model_dir) as (registry, personas_dir):
        write_adapter(personas_dir / "broken", use_dora=True)
        await wait_until(lambda: registry.find("broken") is not None)
        info = registry.get("broken").info()
        assert info.state == "failed" and "DoRA" in (info.error or "")


async def test_a_failed_persona_can_be_deleted(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    async with watching(root, engine, model_dir) as (registry, personas_dir):
        write_adapter(personas_dir / "broken", bias="all")
        await wait_until(lambda: registry.find("broken") is not None)
        await registry.delete("broken")
        assert registry.find("broken") is None
        shutil.rmtree(personas_dir / "broken")
        await asyncio.sleep(0.15)  # the watcher sees it gone: nothing left to unregister


async def test_preload_and_cli_personas_at_start(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    path = write_adapter(root / "cli")
    settings = make_settings(root, persona=[f"from-cli={path}"], preload_personas=True)
    registry = make_registry(settings, engine, model_dir)
    async with personas_running(registry, settings):
        assert registry.get("from-cli").state == "loaded"
        assert registry.get("from-cli").source == "cli"


async def test_a_broken_cli_persona_stops_start_up(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    path = write_adapter(root / "cli", r=64)
    settings = make_settings(root, persona=[f"big={path}"])
    registry = make_registry(settings, engine, model_dir)

    async def start() -> None:
        async with personas_running(registry, settings):
            pass

    with pytest.raises(RuntimeError, match="max_lora_rank"):
        await start()


def write_deep_manifest(bundle: Path) -> Path:
    write_bundle(bundle)
    (bundle / "persona.toml").write_text(f"x = {DEEP}\n")  # tomllib: RecursionError, not TOML...
    return bundle


def assert_failed_alone(registry: PersonaRegistry, name: str, good: str) -> None:
    info = registry.get(name).info()
    assert info.state == "failed" and "nested too deeply" in (info.error or "")
    assert registry.get(good).state == "registered"
    assert name not in registry.names() and good in registry.names()


async def test_a_deeply_nested_manifest_fails_alone_in_the_start_up_scan(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    personas_dir = root / "personas"
    write_deep_manifest(personas_dir / "deep")
    write_bundle(personas_dir / "good")
    settings = make_settings(root, personas_dir=[personas_dir], persona_watch_interval=0.05)
    registry = make_registry(settings, engine, model_dir)
    async with personas_running(registry, settings):
        assert_failed_alone(registry, "deep", "good")
        write_bundle(personas_dir / "later")  # and the watcher goes on
        await wait_until(lambda: registry.find("later") is not None)
        assert registry.get("deep").state == "failed"


async def test_a_deeply_nested_manifest_fails_alone_in_a_later_scan(
    root: Path, engine: CountingEngine, model_dir: Path
) -> None:
    async with watching(root, engine, model_dir) as (registry, personas_dir):
        write_deep_manifest(personas_dir / "deep")
        write_bundle(personas_dir / "good")
        await wait_until(lambda: registry.find("deep") is not None)
        await wait_until(lambda: registry.find("good") is not None)
        assert_failed_alone(registry, "deep", "good")
        assert registry.get("first").state == "registered"
        write_bundle(personas_dir / "deep", version="2")  # fixed: registered on the next scan
        await wait_until(lambda: registry.get("deep").state == "registered")
