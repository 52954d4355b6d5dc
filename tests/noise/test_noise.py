"""The noise stage end to end on the sample web: noise estimates, concepts, repaired captions."""

from __future__ import annotations

import json
import os
import re
import tarfile

import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, default_config_text, load_config
from pipeline.jobs import run_job
from sampleweb.captions import mentioned_concepts
from sampleweb.scoring import chosen_caption, noise_scores
from tests.conftest import TEST_OVERRIDES, read_output_rows
from tests.pipeline.test_cli import overrides, winnow
from transforms.noise.concepts import mentioned, term_words, words


@pytest.fixture(scope="module")
def truth(sample_web):
    return {row["url"]: row for row in sample_web.truth_rows()}


#: Caption repair opted into (the defaults keep every caption as it is): complete and replace.
REPAIR = ["noise.replace_above=0.5", "noise.min_coverage=1.0"]
#: ... with the precision guard switched off, so that the repair mechanics run with the shipped
#: model, whose concepts the guard (rightly) does not trust.
UNGUARDED = [*REPAIR, "noise.min_term_precision=0", "noise.min_term_support=1"]


@pytest.fixture(scope="module")
def run(sample_web, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("repair"))
    stats = run_job(load_config(overrides=[*TEST_OVERRIDES, *UNGUARDED]), [sample_web.urls], output)
    return output, stats, read_output_rows(output)


#: A model that retrieves captions well but cannot tag objects (its README says how it was made).
COLOUR_ONLY_MODEL = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models", "colour-only-clip")


@pytest.fixture(scope="module")
def colour_only(sample_web, tmp_path_factory):
    """Repair asked for, guard at its defaults, with the model that cannot tag objects."""
    output = str(tmp_path_factory.mktemp("colour-only"))
    config = load_config(overrides=[*TEST_OVERRIDES, *REPAIR, f"embed.model={COLOUR_ONLY_MODEL}"])
    stats = run_job(config, [sample_web.urls], output)
    return output, stats, read_output_rows(output)


def test_the_precision_guard_stops_a_model_that_cannot_tag_from_completing_captions(colour_only, truth):
    # The model's concepts are colours and backgrounds, not the objects the captions name: no term
    # earns the guard's trust.
    output, stats, rows = colour_only
    guard = stats["noise"]["term_guard"]
    assert guard["terms_trusted"] == 0 and guard["terms_measured"] > 0
    assert all(t["precision"] < 0.8 for t in guard["best_terms"] if t["support"] >= 20)
    assert guard["repair"].startswith("off:")
    # The audit report states the verdict with the measured figures.
    with open(os.path.join(output, "report.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert f"0 of {guard['terms_measured']} measured concepts trusted" in page and "repair off:" in page
    best = guard["best_terms"][0]
    assert f'<td class="url">{best["term"]}</td><td class="n">{best["precision"]:.2f}</td>' in page
    rows = [r for r in rows if r["noise_prob"] is not None]
    assert not [r for r in rows if r["caption_source"] in ("completed", "bow") or r["caption_bow"]]
    kept_clean = [r for r in rows if r["status"] == "success" and truth[r["url"]]["noise"] == "none"]
    assert kept_clean and all(
        chosen_caption(r) == r["caption_clean"] for r in kept_clean if r["noise_prob"] <= 0.5
    )


def test_the_precision_guard_lets_through_only_the_terms_a_model_that_sees_objects_gets_right(
    sample_web, tmp_path, truth, run
):
    # The shipped model sees part of the objects. On the tests' 300-pair web a colour-shape term
    # is a visual concept of only a few clean pairs, so the support asked for is 5, not 20.
    output = str(tmp_path / "guarded")
    config = load_config(overrides=[*TEST_OVERRIDES, *REPAIR, "noise.min_term_support=5"])
    guard = run_job(config, [sample_web.urls], output)["noise"]["term_guard"]
    trusted = guard["best_terms"][: guard["terms_trusted"]]
    assert trusted and all(t["precision"] >= 0.8 and t["support"] >= 5 for t in trusted)
    assert "repair" not in guard  # terms passed: repair is on, for those terms only
    guarded = noise_scores(read_output_rows(output), truth)
    unguarded = noise_scores(run[2], truth)  # the same web, every term trusted
    print(f"guarded {guarded}\nunguarded {unguarded}")
    # Without the guard, completions give clean captions objects that are not in the image (58 %
    # of them when measured); with it, (almost) none, and nearly every clean caption ships as it
    # came (95 % here; the rest are pairs the noise estimate got wrong, whose caption a clean
    # near-duplicate's replaced, which the guard does not govern; 98.4 % on 2,000 pairs).
    assert guarded.clean_foreign <= 0.01 < unguarded.clean_foreign
    assert guarded.clean_unchanged >= 0.9 > unguarded.clean_unchanged


def test_noise_prob_finds_mismatched_captions_better_than_clip_score(colour_only, run, truth):
    # Where the CLIP score leaves room (the colour-only model), the neighbour agreements add to
    # it; where it is already all but perfect (the shipped model), noise_prob keeps up with it.
    weak, strong = noise_scores(colour_only[2], truth), noise_scores(run[2], truth)
    for name, scores in (("colour-only", weak), ("shipped", strong)):
        print(
            f"{name}: ROC-AUC for mismatched captions: noise_prob {scores.auc_noise_prob:.4f}, "
            f"clip_score {scores.auc_clip_score:.4f}"
        )
        assert scores.mismatched >= 15 and scores.clean >= 150
    assert weak.auc_noise_prob >= 0.97 and weak.auc_noise_prob > weak.auc_clip_score
    assert strong.auc_noise_prob >= 0.99 and strong.auc_noise_prob >= strong.auc_clip_score - 0.001


def test_completions_add_only_missing_concepts_and_replacements_name_their_source(run, truth):
    _, _, rows = run
    config = load_config(overrides=UNGUARDED).noise
    judged = {r["uid"]: r for r in rows if r["noise_prob"] is not None}
    completed = [r for r in judged.values() if r["caption_source"] == "completed"]
    replaced = [r for r in judged.values() if r["caption_source"] in ("neighbour", "bow")]
    assert completed and replaced
    for row in completed:
        assert row["noise_prob"] <= config.replace_above
        stem, added = row["caption_original"].rstrip(".!?;:,。！？；：，、 "), row["caption_completed"]
        assert added.startswith(stem) and len(added) > len(stem)
        terms = {c["term"] for c in row["concepts"]}
        lang = row["lang"]
        for term in re.split(r", |，", added[len(stem) :])[1:]:
            # Each added concept is one of the image's top terms, and the original did not name it.
            assert term in terms
            assert not mentioned(words(row["caption_original"], lang), term_words(term, lang), lang)
    for row in replaced:
        assert row["noise_prob"] > config.replace_above
        if row["caption_source"] == "neighbour":
            source = judged[row["pseudo_source"].removeprefix("neighbour:")]
            assert source["noise_prob"] <= config.pseudo_max_noise
            assert row["caption_pseudo"] == source["caption_clean"]
        else:
            assert row["caption_bow"] and row["pseudo_source"] is None
    # How the repairs score against the scene (the shipped model does not tell shapes apart, so
    # these stay low; see benchmarks/README.md).
    print(noise_scores(rows, truth))


def test_the_demo_policy_keeps_clean_captions_and_drops_noisy_pairs(sample_web, tmp_path, truth):
    # pipeline/default.yaml, for the shipped model: estimate and filter, no repair.
    config = load_config(base_text=default_config_text(), overrides=TEST_OVERRIDES)
    output = str(tmp_path / "demo")
    run_job(config, [sample_web.urls], output)
    rows = [r for r in read_output_rows(output) if r["noise_prob"] is not None]
    clean = [r for r in rows if truth[r["url"]]["noise"] == "none"]
    mismatched = [r for r in rows if truth[r["url"]]["noise"] == "mismatched"]
    kept_clean = [r for r in clean if r["status"] == "success"]
    # 95 % on the demo's 2,000-pair web (benchmarks/README.md); here the mixtures are fitted on the
    # run's own 250 scores, a coarser fit.
    assert len(kept_clean) >= 0.88 * len(clean)
    for row in kept_clean:
        assert row["caption_source"] == "original" and chosen_caption(row) == row["caption_clean"]
        assert mentioned_concepts(row["caption_original"]) == set(truth[row["url"]]["concepts"])
    dropped = [r for r in mismatched if r["reason"] == "noisy_pair"]
    assert len(dropped) >= 0.9 * len(mismatched)


def test_every_judged_row_has_its_columns_and_the_tar_holds_the_chosen_caption(run):
    output, stats, rows = run
    judged = [r for r in rows if r["noise_prob"] is not None]
    assert judged and all(0.0 <= r["noise_prob"] <= 1.0 for r in judged)
    for row in judged:
        assert row["caption_original"] == row["caption_clean"]
        assert row["caption_source"] in ("original", "completed", "generated", "neighbour", "bow") or (
            row["reason"] == "noisy_pair" and row["status"] == "rejected"
        )
        assert len(row["concepts"]) == 10 and row["concepts"][0]["score"] >= row["concepts"][-1]["score"]
        assert row["caption_agreement"] is not None and row["image_agreement"] is not None
    not_judged = [r for r in rows if r["stage"] in ("text", "crawl", "dedup")]
    assert not_judged and all(r["noise_prob"] is None for r in not_judged)
    members = {}
    for name in sorted(os.listdir(output)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(output, name)) as tar:
                members.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    kept = [r for r in judged if r["status"] == "success"]
    assert kept
    for row in kept:
        assert members[f"{row['uid']}.txt"].decode() == chosen_caption(row)
        meta = json.loads(members[f"{row['uid']}.json"])
        assert (
            meta["caption_original"] == row["caption_original"]
            and meta["caption_source"] == row["caption_source"]
        )
    # The fitted mixtures are in the stats, for the audit.
    mixtures = stats["noise"]["mixtures"]
    assert set(mixtures) == {"clip_score", "caption_agreement", "image_agreement"}
    for fitted in mixtures.values():
        assert fitted["noise"]["mean"] < fitted["clean"]["mean"] and fitted["samples"] == len(judged)
    assert stats["noise"]["vocabulary"]["en"] > 50
    with open(os.path.join(output, "stats.json"), encoding="utf-8") as handle:
        assert json.load(handle)["noise"] == stats["noise"]
    parquet = pq.read_schema(os.path.join(output, "00000.parquet"))
    assert parquet.field("concepts").type.value_type.names == ["term", "score"]


def test_rejected_noisy_pairs_keep_their_row(run):
    _, stats, rows = run
    noisy = [r for r in rows if r["reason"] == "noisy_pair"]
    assert stats["stages"]["noise"]["dropped"].get("noisy_pair", 0) == len(noisy)
    for row in noisy:
        assert row["stage"] == "noise" and row["key"] is None and row["error"]


def test_noise_stage_needs_the_embeddings():
    with pytest.raises(ConfigError, match="noise stage needs the embed stage"):
        load_config(overrides=["run.stages=text,crawl,noise"])


def test_bad_word_list_names_the_file(tmp_path, sample_web):
    path = tmp_path / "words.txt"
    path.write_text("\n# only a comment\n", encoding="utf-8")
    config = load_config(overrides=[*TEST_OVERRIDES, f"noise.vocabulary={path}"])
    with pytest.raises(ValueError, match="words.txt"):
        run_job(config, [sample_web.urls], str(tmp_path / "out"))


def _tiny_coca(folder) -> None:
    """A randomly initialised open_clip CoCa small enough for a test: it writes (meaningless)
    captions through the same `generate` a real CoCa checkpoint uses."""
    import torch
    from open_clip.coca_model import CoCa
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16,
                       "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
        "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                           "attn_pooler_heads": 2},
    }  # fmt: skip
    torch.manual_seed(0)
    model = CoCa(**cfg)
    folder.mkdir()
    preprocess = {
        "size": 32,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {**cfg, "custom_text": True}, "preprocess_cfg": preprocess})
    )
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )


def test_a_coca_model_writes_the_pseudo_captions(sample_web, tmp_path):
    folder = tmp_path / "tiny-coca"
    _tiny_coca(folder)
    # 40 pairs are enough: the decoder's beam search runs on CPU here.
    urls = str(tmp_path / "urls.parquet")
    pq.write_table(pq.read_table(sample_web.urls).slice(0, 40), urls)
    overrides = [
        *TEST_OVERRIDES,
        f"embed.model={folder}",
        "run.stages=[text,crawl,embed,noise]",
        "noise.replace_above=0.0",  # every caption is replaced: each kept pair gets a generated one
    ]
    output = str(tmp_path / "out")
    run_job(load_config(overrides=overrides), [urls], output)
    rows = [r for r in read_output_rows(output) if r["noise_prob"] is not None and r["status"] == "success"]
    assert len(rows) >= 20
    for row in rows:
        assert row["caption_source"] == "generated" and row["pseudo_source"] == f"model:{folder}"
        assert isinstance(row["caption_pseudo"], str) and row["caption_pseudo"].strip()
        assert chosen_caption(row) == row["caption_pseudo"]


def test_item05_a_bare_run_ships_every_kept_caption_as_cleaned(sample_web, tmp_path):
    # `winnow run` without --config, every stage, the shipped model: the code's defaults estimate
    # noise but never complete, replace or drop (repair is opted into).
    output = str(tmp_path / "out")
    result = winnow(
        "run", "--input", sample_web.urls, "--output", output, *overrides(),
        "--stages", "text,crawl,embed,dedup,noise",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_output_rows(output)
    judged = [r for r in rows if r["noise_prob"] is not None]
    kept = [r for r in rows if r["status"] == "success"]
    assert len(judged) >= 200 and {r["status"] for r in judged} == {"success"}
    texts = {}
    for name in sorted(os.listdir(output)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(output, name)) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".txt"):
                        texts[member.name.removesuffix(".txt")] = tar.extractfile(member).read().decode()
    assert set(texts) == {r["uid"] for r in kept}
    for row in kept:
        assert row["caption_source"] == "original" and row["caption_completed"] is None
        assert texts[row["uid"]] == row["caption_clean"] == chosen_caption(row)
    assert "0 completed, 0 generated, 0 neighbour, 0 bow; 0 too noisy" in result.stdout
