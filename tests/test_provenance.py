"""Provenance in point.json (commit, dirty, config hash, versions, machine, times) and the
mixed-commit refusal of ablation tables, against real git repositories in tmp_path."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import ml_collections
import pytest

from reparam_jax.errors import UserError
from reparam_jax.rundir import provenance
from reparam_jax.sweeps import launchers


def git(repo: Path, *args: str) -> str:
  return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                         *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
  path = tmp_path / "repo"
  path.mkdir()
  git(path, "init", "-q")
  (path / "code.py").write_text("x = 1\n")
  git(path, "add", "code.py")
  git(path, "commit", "-q", "-m", "first")
  provenance.git_state.cache_clear()
  return path


def test_git_commit_and_dirty_flag(repo: Path) -> None:
  head = git(repo, "rev-parse", "HEAD")
  assert provenance.git_state(repo) == (head, False)
  (repo / "runs").mkdir()
  (repo / "runs" / "untracked.txt").write_text("a run folder")
  provenance.git_state.cache_clear()
  assert provenance.git_state(repo) == (head, False)  # untracked files do not count
  (repo / "code.py").write_text("x = 2\n")
  provenance.git_state.cache_clear()
  assert provenance.git_state(repo) == (head, True)
  git(repo, "commit", "-q", "-am", "second")
  provenance.git_state.cache_clear()
  second = git(repo, "rev-parse", "HEAD")
  assert second != head and provenance.collect({"a": 1}, repo)["commit"] == second
  # A folder inside the repository is not a checkout of its own.
  (repo / "sub").mkdir()
  assert provenance.git_state(repo / "sub") == (None, None)


def test_outside_git_and_revision_file(tmp_path: Path) -> None:
  code = tmp_path / "copied"
  code.mkdir()
  assert provenance.git_state(code) == (None, None)
  (code / provenance.REVISION_FILE).write_text('{"commit": "abc123", "dirty": true}\n')
  provenance.git_state.cache_clear()
  assert provenance.git_state(code) == ("abc123", True)


def test_config_hash_is_canonical() -> None:
  a = provenance.config_hash({"b": {"y": 1, "x": 2}, "a": 0.5})
  assert a == provenance.config_hash({"a": 0.5, "b": {"x": 2, "y": 1}})
  assert a != provenance.config_hash({"a": 0.25, "b": {"x": 2, "y": 1}})
  cfg = ml_collections.ConfigDict({"a": 0.5, "b": {"x": 2, "y": 1}})
  assert provenance.config_hash(cfg) == a and len(a) == 64
  assert provenance.config_hash(None) is None


def test_record_start_and_end_merge_into_point_json(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
  wd = tmp_path / "point"
  wd.mkdir()
  launcher_keys = {"name": "p", "config": "c.py", "overrides": {"seed": 0},
                   "command": ["python", "-m", "x"], "attempts": 1}
  (wd / "point.json").write_text(json.dumps(launcher_keys))
  provenance.git_state.cache_clear()
  info = provenance.record_start(wd, ml_collections.ConfigDict({"seed": 0}), process_index=0)
  on_disk = json.loads((wd / "point.json").read_text())
  assert on_disk == info
  assert {k: on_disk[k] for k in launcher_keys} == launcher_keys
  prov = on_disk["provenance"]
  assert prov["commit"] == provenance.git_state()[0]
  if (provenance.CODE_ROOT / ".git").exists():  # a checkout (not an unpacked copy)
    assert prov["commit"] == git(provenance.CODE_ROOT, "rev-parse", "HEAD")
    assert isinstance(prov["dirty"], bool)
  assert prov["config_hash"] == provenance.config_hash({"seed": 0})
  assert set(prov["packages"]) == {*provenance.PACKAGES, "python"}
  assert prov["packages"]["jax"] and prov["packages"]["numpy"]
  assert prov["machine"]["hostname"] and "platform" in prov["machine"]
  assert on_disk["status"] == "running" and on_disk["end"] is None and on_disk["starts"] == 1
  first_start = on_disk["start"]

  # Git is asked once per process: a resume does no subprocess call.
  def no_subprocess(*args, **kwargs):
    raise AssertionError(f"subprocess call {args}")
  monkeypatch.setattr(provenance.subprocess, "run", no_subprocess)
  provenance.record_end(wd, "preempted", process_index=0)
  provenance.record_start(wd, {"seed": 0}, process_index=0)
  provenance.record_end(wd, "done", process_index=0)
  on_disk = json.loads((wd / "point.json").read_text())
  assert on_disk["start"] == first_start and on_disk["end"] and on_disk["status"] == "done"
  assert on_disk["starts"] == 2
  assert [h["status"] for h in on_disk["history"]] == ["preempted", "done"]
  assert all(h["end"] for h in on_disk["history"])
  assert sorted(p.name for p in wd.iterdir()) == ["point.json"]  # no temp file left
  # Only process 0 writes.
  before = (wd / "point.json").read_text()
  assert provenance.record_start(wd, {}, process_index=1) is None
  assert provenance.record_end(wd, "failed", process_index=1) is None
  assert (wd / "point.json").read_text() == before


def _point(root: Path, name: str, commit: str | None, dirty: bool = False) -> str:
  wd = root / name
  wd.mkdir(parents=True)
  (wd / "done.json").write_text("{}")
  if commit is not None:
    provenance.update_point(wd, {"name": name, "provenance": {"commit": commit, "dirty": dirty}})
  return str(wd)


def test_mixed_commits_are_refused_unless_allowed(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
  abc, dfe = "abc1234" + "0" * 33, "def5678" + "1" * 33
  wds = [_point(tmp_path, f"a{i}", abc) for i in range(5)]
  wds += [_point(tmp_path, f"d{i}", dfe, dirty=i == 0) for i in range(2)]
  wds += [_point(tmp_path, "old", None)]
  by_commit = provenance.commits_of(wds)
  assert {c: len(w) for c, w in by_commit.items()} == {abc: 5, dfe: 2, None: 1}
  with pytest.raises(UserError) as err:
    provenance.check_one_commit(wds, allow_mixed=False)
  assert str(err.value) == (
      "points of this table come from 2 commits (abc1234: 5 points, def5678: 2 points, "
      "unknown (no provenance): 1 point); re-run the stale points or pass --allow_mixed_commits")
  provenance.check_one_commit(wds, allow_mixed=True)
  assert "allowed by --allow_mixed_commits" in capsys.readouterr().err
  # One commit plus points without provenance: listed, not refused.
  provenance.check_one_commit(wds[:5] + wds[-1:], allow_mixed=False)
  assert "unknown (no provenance): 1 point" in capsys.readouterr().err
  provenance.check_one_commit(wds[-1:], allow_mixed=False)
  provenance.check_one_commit(wds[5:6], allow_mixed=False)
  assert "uncommitted changes" in capsys.readouterr().err


def test_runner_flags_carry_the_new_options() -> None:
  parser = argparse.ArgumentParser()
  launchers.add_runner_flags(parser)
  args = parser.parse_args(["--allow_mixed_commits", "--max_retries=5", "--array_limit=3",
                            "--tpu_names=a,b", "--tpu_names=c"])
  assert args.allow_mixed_commits
  kwargs = launchers.runner_kwargs(args)
  assert kwargs["max_retries"] == 5 and kwargs["array_limit"] == 3
  assert kwargs["tpu_names"] == ["a", "b", "c"]
  assert not parser.parse_args([]).allow_mixed_commits
