"""Language consistency (DeepSeek-R1's language reward): the share of the reasoning in the target language.

Two checks, cheapest first. A script check counts letters by writing system: Chinese written into an
English chain of thought (R1-Zero's typical failure) is caught there, with no model. Languages that
share a script (English, Spanish, French, German all write Latin) are told apart by lingua, restricted
to a few languages, on chunks of a few sentences: lingua's own word-level segmentation
(`detect_multiple_languages_of`) calls short English phrases such as "let me" or "plus 3 is 11"
French, a fifth of a plain English math reasoning in our test; a sentence or two is enough context
for it to be right. With only one language per script in `languages`, lingua is never called.
"""
from __future__ import annotations

import re
from functools import lru_cache

from distill.errors import ConfigError
from distill.filters.base import Filter, register_filter
from distill.warehouse.schema import Trace

# Letters by script. Anything alphabetic not listed here counts as "other" (off target unless the
# target writes it).
_SCRIPTS = {
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff",
    "kana": "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f",
    "hangul": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f",
    "cyrillic": "\u0400-\u052f",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "arabic": "\u0600-\u06ff\u0750-\u077f",
    "hebrew": "\u0590-\u05ff",
    "devanagari": "\u0900-\u097f",
    "thai": "\u0e00-\u0e7f",
}
# The scripts each language writes; a language not listed writes Latin.
_LANG_SCRIPTS = {
    "zh": ("han",), "ja": ("han", "kana"), "ko": ("hangul", "han"),
    "ru": ("cyrillic",), "uk": ("cyrillic",), "bg": ("cyrillic",), "sr": ("cyrillic",), "be": ("cyrillic",),
    "mk": ("cyrillic",), "kk": ("cyrillic",), "mn": ("cyrillic",),
    "el": ("greek",), "ar": ("arabic",), "fa": ("arabic",), "ur": ("arabic",), "he": ("hebrew",),
    "hi": ("devanagari",), "mr": ("devanagari",), "th": ("thai",),
}

_LETTER = re.compile(r"[^\W\d_]")
# Math and code are not prose in any language: `\frac`, `x^2`, `def f(x):` would only add noise (and
# Latin letters to a Chinese trace). Fenced and inline code, display and inline math, LaTeX commands.
_NOT_PROSE = re.compile(
    r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]*`"
    r"|\\begin\{([A-Za-z]+\*?)\}.*?\\end\{\1\}"
    r"|\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)|\$[^$\n]*\$"
    r"|\\[A-Za-z]+",
    re.S,
)
# Greek letters in math (π, θ), super- and subscripts (², ⁿ, ₁), fractions (½), letterlike symbols (ℝ),
# circled numbers and math alphanumerics (𝑥) are notation, not words.
_NOTATION = "\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2100-\u218f\u2460-\u24ff\U0001d400-\U0001d7ff"
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|(?<=[。！？；：])|\n+")

# R1's language reward is a share of words. A word is ~4.5 Latin letters but ~1.5 Chinese characters,
# so a CJK character weighs 3 letters: the shares below then approximate word shares (and UTF-8 bytes).
_CJK_SCRIPTS = {"han", "kana", "hangul"}
_CJK = re.compile(f"[{''.join(_SCRIPTS[s] for s in sorted(_CJK_SCRIPTS))}]")
CJK_WEIGHT = 3
CHUNK_LETTERS = 60  # sentences are joined until a chunk has this many letters (~12 words): lingua's context


def _language(code: str):
    from lingua import IsoCode639_1, Language

    try:
        return Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper()))
    except (AttributeError, ValueError):
        raise ConfigError(f"language filter: unknown ISO 639-1 code {code!r}") from None


@lru_cache(maxsize=8)
def _detector(codes: tuple[str, ...]):
    # Building is cheap; each language's model is loaded on first use (~0.1 s each), once per process.
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(*(_language(c) for c in codes)).build()


def _scripts_of(code: str) -> tuple[str, ...]:
    return _LANG_SCRIPTS.get(code, ("latin",))


# The most frequent function words of Spanish, French, German, Portuguese and Italian that are not
# English words. Only used to decide when lingua is worth asking; lingua still decides.
_LATIN_RIVAL_WORDS = re.compile(
    r"\b(?:el|los|las|del|es|una|por|para|con|que|est|les|des|une|et|pour|dans|avec|sont|pas|qui|der|die|das|"
    r"und|ist|nicht|ein|eine|mit|auf|den|dem|ich|wir|sie|zu|y|o|um|uma|não|il|di|che|della|sono|non)\b",
    re.IGNORECASE)


@register_filter("language")
class LanguageConsistency(Filter):
    """Share of the reasoning in the target language, by letters; pure math (no letters) scores 1.0."""

    def __init__(self, target: str = "en", min_share: float = 0.95,
                 languages: list[str] = ("en", "zh", "ja", "ko", "ru", "es", "fr", "de"),
                 min_confidence: float = 0.25):
        self.target = target.lower()
        self.min_share = float(min_share)
        if not 0.0 <= self.min_share <= 1.0:
            raise ConfigError(f"language filter: min_share must be within [0, 1], got {min_share}")
        self.languages = tuple(sorted({c.lower() for c in languages} | {self.target}))
        for code in self.languages:
            _language(code)  # a typo fails here, when the recipe is loaded, not mid-run
        # A chunk counts against the target only when lingua gives the target less than this
        # confidence (confidences over `languages` sum to 1): English math with few words ("2 times 4
        # is 8, plus 3 is 11.") gets ~0.3 English against ~0.4 French; real French gets English < 0.05.
        self.min_confidence = float(min_confidence)
        own = set(_scripts_of(self.target))
        own_ranges = "".join(_SCRIPTS[s] for s in sorted(own))
        notation = "".join(_SCRIPTS[s] for s in ("greek",) if s not in own) + _NOTATION
        self._notation = re.compile(f"[{notation}]")
        self._own = re.compile(f"[{own_ranges}]")
        self._foreign = re.compile(f"[^\\W\\d_{own_ranges}]")  # a letter of any other script
        self._own_weight = CJK_WEIGHT if own <= _CJK_SCRIPTS else 1
        # lingua is needed only when another configured language writes one of the target's scripts
        self._rivals = [c for c in self.languages if c != self.target and own & set(_scripts_of(c))]
        self._lingua_target = _language(self.target)

    def score(self, trace: Trace) -> float:
        return self.share(trace.reasoning or trace.completion or "")

    def keep(self, score: float) -> bool | tuple[bool, str]:
        return score >= self.min_share or (False, "language_mixed")

    def share(self, text: str) -> float:
        text = self._notation.sub(" ", _NOT_PROSE.sub(" ", text))
        total = len(_LETTER.findall(text)) + (CJK_WEIGHT - 1) * len(_CJK.findall(text))
        if total == 0:
            return 1.0
        own = self._own_weight * len(self._own.findall(text))
        if own == 0 or not self._rivals:
            return own / total
        # Each chunk is all target or all not: lingua judges sentences, not words.
        on_target = sum(n for chunk, n in self._chunks(text) if n < CHUNK_LETTERS or self._is_target(chunk))
        return on_target / total

    def _chunks(self, text: str) -> list[tuple[str, int]]:
        """Runs of whole sentences with at least CHUNK_LETTERS (weighted) letters of the target's scripts.

        Letters of other scripts are blanked out first: they are already counted off target, and left
        in they would drag the target's own words in the same sentence down with them. A chunk still
        shorter than CHUNK_LETTERS (the whole text is short) is too little for lingua to judge and
        counts as target.
        """
        chunks, buf, n = [], [], 0
        for sentence in _SENTENCE_END.split(self._foreign.sub(" ", text)):
            k = self._own_weight * len(self._own.findall(sentence))
            if not k:
                continue
            buf.append(sentence)
            n += k
            if n >= CHUNK_LETTERS:
                chunks.append((" ".join(buf), n))
                buf, n = [], 0
        if buf:  # a short tail joins the chunk before it
            last, m = chunks.pop() if chunks else ("", 0)
            chunks.append((f"{last} {' '.join(buf)}", m + n))
        return chunks

    def _is_target(self, chunk: str) -> bool:
        # Fast path for English, the common target: Spanish, French and German prose of a sentence or
        # more all but always has an accented letter or one of their commonest words; a chunk with
        # neither is English without asking lingua (~1 ms per 2,000 characters, most of the chain's cost).
        if self.target == "en" and chunk.isascii() and not _LATIN_RIVAL_WORDS.search(chunk):
            return True
        confidence = _detector(self.languages).compute_language_confidence(chunk, self._lingua_target)
        return confidence >= self.min_confidence
