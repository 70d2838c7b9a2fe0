"""The versioned language table: the 122 Belebele variants and their curated labels."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from relxfer.data.languages import all_languages, language, languages_in, table_version
from relxfer.errors import SpecError

pytestmark = pytest.mark.unit

# The 122 language variants of the Belebele release (FLORES-200 codes).
BELEBELE_CODES = """
acm_Arab afr_Latn als_Latn amh_Ethi apc_Arab arb_Arab arb_Latn ars_Arab ary_Arab arz_Arab asm_Beng
azj_Latn bam_Latn ben_Beng ben_Latn bod_Tibt bul_Cyrl cat_Latn ceb_Latn ces_Latn ckb_Arab dan_Latn
deu_Latn ell_Grek eng_Latn est_Latn eus_Latn fin_Latn fra_Latn fuv_Latn gaz_Latn grn_Latn guj_Gujr
hat_Latn hau_Latn heb_Hebr hin_Deva hin_Latn hrv_Latn hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn
isl_Latn ita_Latn jav_Latn jpn_Jpan kac_Latn kan_Knda kat_Geor kaz_Cyrl kea_Latn khk_Cyrl khm_Khmr
kin_Latn kir_Cyrl kor_Hang lao_Laoo lin_Latn lit_Latn lug_Latn luo_Latn lvs_Latn mal_Mlym mar_Deva
mkd_Cyrl mlt_Latn mri_Latn mya_Mymr nld_Latn nob_Latn npi_Deva npi_Latn nso_Latn nya_Latn ory_Orya
pan_Guru pbt_Arab pes_Arab plt_Latn pol_Latn por_Latn ron_Latn rus_Cyrl shn_Mymr sin_Latn sin_Sinh
slk_Latn slv_Latn sna_Latn snd_Arab som_Latn sot_Latn spa_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn
swh_Latn tam_Taml tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi tsn_Latn tso_Latn tur_Latn ukr_Cyrl
urd_Arab urd_Latn uzn_Latn vie_Latn war_Latn wol_Latn xho_Latn yor_Latn zho_Hans zho_Hant zsm_Latn
zul_Latn
""".split()

ROMANIZED = {
    "arb_Latn": "arb_Arab",
    "ben_Latn": "ben_Beng",
    "hin_Latn": "hin_Deva",
    "npi_Latn": "npi_Deva",
    "sin_Latn": "sin_Sinh",
    "urd_Latn": "urd_Arab",
}


def test_table_has_exactly_the_122_belebele_variants():
    assert len(BELEBELE_CODES) == 122
    assert [lang.code for lang in all_languages()] == sorted(BELEBELE_CODES)


def test_every_record_is_complete_and_scripts_agree_with_codes():
    script_of_suffix: dict[str, set[str]] = {}
    for lang in all_languages():
        assert all([lang.name, lang.script, lang.family, lang.genus]), lang
        script_of_suffix.setdefault(lang.script_code, set()).add(lang.script)
    # One ISO 15924 name per script code, and the codes' suffixes are all known.
    assert all(len(names) == 1 for names in script_of_suffix.values()), script_of_suffix
    assert language("arb_Arab").script == "Arabic" and language("zho_Hant").script == "Han (Traditional variant)"


def test_table_version_comes_from_the_data_file():
    raw = json.loads(resources.files("relxfer.data").joinpath("languages.json").read_text(encoding="utf-8"))
    assert table_version() == raw["version"] == "1.0.0"


def test_semitic_is_the_arabic_varieties_hebrew_amharic_maltese_tigrinya():
    assert languages_in("Semitic") == [
        "acm_Arab",
        "amh_Ethi",
        "apc_Arab",
        "arb_Arab",
        "arb_Latn",
        "ars_Arab",
        "ary_Arab",
        "arz_Arab",
        "heb_Hebr",
        "mlt_Latn",
        "tir_Ethi",
    ]
    assert all(lang.family == "Afro-Asiatic" for lang in map(language, languages_in("Semitic")))


def test_groups_match_family_or_genus_case_insensitively():
    assert languages_in("semitic") == languages_in("SEMITIC")
    assert languages_in("Afro-Asiatic") == sorted(languages_in("Semitic") + ["gaz_Latn", "hau_Latn", "som_Latn"])
    assert "nya_Latn" in languages_in("Bantu") and "tso_Latn" in languages_in("Niger-Congo")
    assert languages_in("Romance") == ["cat_Latn", "fra_Latn", "ita_Latn", "por_Latn", "ron_Latn", "spa_Latn"]


def test_paper_controls_are_outside_semitic():
    assert (language("jpn_Jpan").family, language("kor_Hang").family) == ("Japonic", "Koreanic")
    assert (language("fra_Latn").family, language("fra_Latn").genus) == ("Indo-European", "Romance")


def test_known_corrections_of_the_belebele_readme():
    for code in ["nya_Latn", "tso_Latn"]:
        assert (language(code).family, language(code).genus) == ("Niger-Congo", "Bantu")


def test_romanized_variants_share_family_and_genus_with_their_language():
    assert {lang.code for lang in all_languages() if lang.romanized} == set(ROMANIZED)
    for romanized, native in ROMANIZED.items():
        r, n = language(romanized), language(native)
        assert (r.family, r.genus, r.script) == (n.family, n.genus, "Latin")
        assert not n.romanized


@pytest.mark.parametrize(
    "code, message",
    [
        ("hbe_Hebr", "unknown language code 'hbe_Hebr'; did you mean heb_Hebr?"),
        ("Hebrew", "unknown language code 'Hebrew'; did you mean heb_Hebr?"),
        ("arb_arab", "unknown language code 'arb_arab'; did you mean arb_Arab?"),
        ("hin", "unknown language code 'hin'; did you mean hin_Deva or hin_Latn?"),
        ("zho_Hanz", "unknown language code 'zho_Hanz'; did you mean zho_Hans or zho_Hant?"),
        ("xyz_Qqqq", "unknown language code 'xyz_Qqqq'"),
    ],
)
def test_unknown_code_suggests_close_codes(code, message):
    with pytest.raises(SpecError) as error:
        language(code)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "group, message",
    [
        ("Semetic", "unknown language family or genus 'Semetic'; did you mean Semitic?"),
        ("Indo European", "unknown language family or genus 'Indo European'; did you mean Indo-European?"),
        ("Klingon", "unknown language family or genus 'Klingon'"),
    ],
)
def test_unknown_group_suggests_close_names(group, message):
    with pytest.raises(SpecError) as error:
        languages_in(group)
    assert str(error.value) == message
