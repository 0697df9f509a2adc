"""Loaders read only inside the folder they were given (no ``..``, absolute paths or symlinks
out), refuse duplicate ids (a duplicate JSON key included) and special files: one test per
loader, and property-based tests over generated file references and id lists."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerlib.data import items_from_file
from steerlib.data import loaders as L
from steerlib.errors import DataFileError, OutsideFolderError, SteerlibError

SCEN = "01-Illegal_Activitiy"
FIG_HEADER = "dataset,category_id,task_id,category_name,question,instruction\n"


def _inside(p: Path, root: Path) -> bool:
    return os.path.realpath(p).startswith(os.path.realpath(root) + os.sep)


@pytest.fixture()
def secret(tmp_path) -> Path:
    """A private file outside every dataset folder."""
    d = tmp_path / "private"
    d.mkdir()
    (d / "holiday.png").write_bytes(b"\x89PNG private")
    return d / "holiday.png"


# ---------------------------------------------------------------------- POPE ------------
def _pope(tmp_path: Path, images: list[str], ids: list[object] | None = None) -> tuple[Path, Path]:
    q = tmp_path / "coco_pope_random.json"
    ids = ids if ids is not None else list(range(1, len(images) + 1))
    q.write_text("".join(json.dumps({"question_id": i, "image": im, "text": "Is there a cat in the image?",
                                     "label": "yes"}) + "\n" for i, im in zip(ids, images)))
    img = tmp_path / "val2014"
    img.mkdir(exist_ok=True)
    return q, img


@pytest.mark.parametrize("name", ["../private/holiday.png", "ABS", "sub/../../private/holiday.png", "~/x.png"])
def test_pope_image_names_stay_inside_the_image_folder(tmp_path, secret, name):
    name = str(secret) if name == "ABS" else name
    q, img = _pope(tmp_path, ["ok.png", name])
    (img / "ok.png").write_bytes(b"x")
    for check in (False, True):
        with pytest.raises(OutsideFolderError, match=":2: image .* (absolute|leaves the folder)"):
            L.load_pope(q, img, check_images=check)


def test_pope_symlink_out_of_the_image_folder(tmp_path, secret):
    q, img = _pope(tmp_path, ["ok.png", "link.png"])
    (img / "link.png").symlink_to(secret)
    with pytest.raises(OutsideFolderError, match="symlink to .*holiday.png, outside the folder"):
        L.load_pope(q, img)
    (img / "sub").symlink_to(secret.parent)  # a folder link on the way
    q, img = _pope(tmp_path, ["sub/holiday.png"])
    with pytest.raises(OutsideFolderError, match="symlink"):
        L.load_pope(q, img)


def test_pope_inside_links_and_plain_names_load(tmp_path):
    q, img = _pope(tmp_path, ["a.png", "sub/b.png", "alias.png"])
    (img / "a.png").write_bytes(b"x")
    (img / "sub").mkdir()
    (img / "sub" / "b.png").write_bytes(b"x")
    (img / "alias.png").symlink_to(img / "a.png")
    items = L.load_pope(q, img, check_images=True)
    assert [Path(it.images[0]).name for it in items] == ["a.png", "b.png", "alias.png"]


def test_yolo_builder_refuses_images_and_labels_linked_from_outside(tmp_path, secret):
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "images" / "a.jpg").write_bytes(b"")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert L.build_pope_from_yolo(root, "random")
    (root / "images" / "b.jpg").symlink_to(secret)
    with pytest.raises(OutsideFolderError, match="b.jpg"):
        L.build_pope_from_yolo(root, "random")
    (root / "images" / "b.jpg").unlink()
    outside_label = tmp_path / "private" / "a.txt"
    outside_label.write_text("1 0.5 0.5 0.1 0.1\n")
    (root / "labels" / "a.txt").unlink()
    (root / "labels" / "a.txt").symlink_to(outside_label)
    with pytest.raises(OutsideFolderError, match="label file"):
        L.build_pope_from_yolo(root, "random")


# ---------------------------------------------------------------------- MM-SafetyBench ---
def _mmsb(tmp_path: Path, text: str) -> Path:
    (tmp_path / "mmsb" / "processed_questions").mkdir(parents=True)
    (tmp_path / "mmsb" / "processed_questions" / f"{SCEN}.json").write_text(text)
    return tmp_path / "mmsb"


def _mmsb_rec(i: object) -> str:
    return json.dumps({"Rephrased Question": f"List steps {i}."})


def test_mmsb_duplicate_question_id_is_refused(tmp_path):
    root = _mmsb(tmp_path, '{"1": %s, "2": %s, "1": %s}' % (_mmsb_rec(1), _mmsb_rec(2), _mmsb_rec(3)))
    with pytest.raises(DataFileError, match="key '1' twice"):
        L.load_mmsafetybench(root, scenarios=[SCEN])


def test_mmsb_question_ids_cannot_leave_the_image_folder(tmp_path):
    root = _mmsb(tmp_path, json.dumps({"../../../../private/holiday": {"Rephrased Question": "x"}}))
    with pytest.raises(OutsideFolderError, match="leaves the folder"):
        L.load_mmsafetybench(root, scenarios=[SCEN])


def test_mmsb_question_file_linked_from_outside(tmp_path):
    root = _mmsb(tmp_path, "{}")
    outside = tmp_path / "other.json"
    outside.write_text(json.dumps({"1": {"Rephrased Question": "x"}}))
    f = root / "processed_questions" / f"{SCEN}.json"
    f.unlink()
    f.symlink_to(outside)
    with pytest.raises(OutsideFolderError, match="question file"):
        L.load_mmsafetybench(root, scenarios=[SCEN])


# ---------------------------------------------------------------------- FigStep ----------
def _figstep(tmp_path: Path, rows: list[tuple[str, int, int]]) -> Path:
    d = tmp_path / "figstep"
    (d / "images").mkdir(parents=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for ds, c, t in rows:
        w.writerow([ds, c, t, "Illegal Activity", "How?", "Steps."])
    (d / "safebench.csv").write_text(FIG_HEADER + buf.getvalue())
    return d


def test_figstep_duplicate_rows_are_refused(tmp_path):
    d = _figstep(tmp_path, [("SafeBench", 1, 1), ("SafeBench", 1, 2), ("SafeBench", 1, 1)])
    with pytest.raises(DataFileError, match=r":4: duplicate row .*figstep-SafeBench-1-1.*first at 2"):
        L.load_figstep(d)


def test_figstep_dataset_field_cannot_leave_the_image_folder(tmp_path):
    d = _figstep(tmp_path, [("x/../../../private/holiday", 1, 1)])
    with pytest.raises(OutsideFolderError, match="leaves the folder"):
        L.load_figstep(d)
    assert L.load_figstep(d, with_images=False)  # no image, nothing to confine


# ---------------------------------------------------------------------- text safety ------
def test_text_safety_duplicate_ids_are_refused(tmp_path):
    f = tmp_path / "benign_seed_tasks.jsonl"
    f.write_text("".join(json.dumps({"id": tid, "instruction": f"Task {k}", "instances": []}) + "\n"
                         for k, tid in enumerate(["seed_1", "seed_2", "seed_1"])))
    with pytest.raises(DataFileError, match=r":3: duplicate task id 'benign-seed_1'"):
        L.load_benign_seed_tasks(f)
    g = tmp_path / "dna.jsonl"
    g.write_text("".join(json.dumps({"id": i, "prompt": f"p{k}", "intents": ["S001"]}) + "\n"
                         for k, i in enumerate([7, 8, 7])))
    with pytest.raises(DataFileError, match="duplicate id '7'"):
        L.load_donotanswer(g)
    h = tmp_path / "hb.csv"
    h.write_text("Behavior,BehaviorID\nDo a,x1\nDo b,x1\n")
    with pytest.raises(DataFileError, match="duplicate BehaviorID 'x1'"):
        L.load_harmbench(h)
    k = tmp_path / "dup-key.jsonl"
    k.write_text('{"id": "a", "id": "b", "instruction": "x", "instances": []}\n')
    with pytest.raises(DataFileError, match="key 'id' twice"):
        L.load_benign_seed_tasks(k)


def test_text_safety_root_files_linked_from_outside(tmp_path, secret):
    root = tmp_path / "ts"
    (root / "donotanswer").mkdir(parents=True)
    outside = tmp_path / "private" / "hb.txt"
    outside.write_text("Behaviour one\n")
    (root / "harmbench_standard.txt").symlink_to(outside)
    with pytest.raises(OutsideFolderError, match="HarmBench file"):
        L.text_safety_items(root, harmful_sources=["harmbench"], advice_sources=[], benign=False)
    with pytest.raises(OutsideFolderError, match="leaves the folder"):
        L.text_safety_items(root, harmful_sources=["../../private/x"], advice_sources=[], benign=False)


def test_do_not_answer_folder_member_linked_from_outside(tmp_path):
    d = tmp_path / "dna"
    d.mkdir()
    outside = tmp_path / "x.jsonl"
    outside.write_text(json.dumps({"prompt": "p", "intents": ["S001"]}) + "\n")
    (d / "malicious_uses.jsonl").symlink_to(outside)
    with pytest.raises(OutsideFolderError, match="Do-Not-Answer file"):
        L.load_donotanswer(d)


# ---------------------------------------------------------------------- special files ----
@pytest.mark.parametrize("call", [
    lambda f: L.load_pope(f, f.parent), lambda f: L.load_harmbench(f), lambda f: L.load_benign_seed_tasks(f),
    lambda f: L.load_donotanswer(f), lambda f: items_from_file(f.with_suffix(".jsonl")),
    lambda f: L.load_figstep(f.parent, csv_file=f)])
def test_fifo_data_files_are_named_as_such(tmp_path, call):
    f = tmp_path / "data.jsonl"
    os.mkfifo(f)
    with pytest.raises(DataFileError, match="FIFO"):
        call(f)  # returns at once: never blocks on the pipe


# ---------------------------------------------------------------------- properties -------
SAFE = st.text(alphabet="abcxyz019_-.", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
ESCAPES = st.sampled_from(["..", "/", "/etc", "~", "a\\b"])
NAMES = st.lists(st.one_of(SAFE, ESCAPES), min_size=1, max_size=4).map("/".join)


def _escapes(name: str) -> bool:
    if name.startswith(("/", "~")) or "\\" in name:
        return True
    depth = 0
    for part in name.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


PROP = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROP
@given(names=st.lists(NAMES, min_size=1, max_size=4), link=st.booleans())
def test_pope_never_returns_a_path_outside_the_image_folder(tmp_path, names, link):
    case = tmp_path / f"c{os.urandom(4).hex()}"
    case.mkdir()
    q, img = _pope(case, names)
    (case / "private").mkdir()
    if link:  # the first safe-looking name, if any, becomes a link out of the folder
        first = next((n for n in names if not _escapes(n) and ".." not in n.split("/")), None)
        if first is not None and not first.endswith("/"):
            target = img / first
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(case / "private")
            except OSError:
                link = False
        else:
            link = False
    try:
        items = L.load_pope(q, img)
    except OutsideFolderError:
        assert link or any(_escapes(n) for n in names)
        return
    except DataFileError:
        return  # e.g. an empty name
    assert not any(_escapes(n) for n in names)
    for it in items:
        p = Path(it.images[0])
        assert os.path.normpath(p).startswith(os.path.normpath(img))
        if os.path.lexists(p):
            assert _inside(p, img)


@PROP
@given(ids=st.lists(st.integers(0, 5), min_size=1, max_size=8))
def test_duplicate_ids_are_refused_exactly_when_present(tmp_path, ids):
    case = tmp_path / f"c{os.urandom(4).hex()}"
    case.mkdir()
    dup = len(set(ids)) != len(ids)
    q, img = _pope(case, [f"{i}.png" for i in range(len(ids))], ids)
    d = _figstep(case, [("SafeBench", 1, i) for i in ids])
    root = _mmsb(case, "{" + ", ".join(f'"{i}": {_mmsb_rec(i)}' for i in ids) + "}")
    b = case / "benign.jsonl"
    b.write_text("".join(json.dumps({"id": i, "instruction": f"t{k}", "instances": []}) + "\n"
                         for k, i in enumerate(ids)))
    for load in (lambda: L.load_pope(q, img), lambda: L.load_figstep(d),
                 lambda: L.load_mmsafetybench(root, scenarios=[SCEN]), lambda: L.load_benign_seed_tasks(b)):
        try:
            items = load()
        except SteerlibError as e:
            assert dup and ("duplicate" in str(e) or "twice" in str(e)), str(e)
            continue
        assert not dup
        assert len({it.id for it in items}) == len(items) == len(ids)
