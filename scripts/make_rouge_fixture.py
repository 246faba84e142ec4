#!/usr/bin/env python3
# Generates the ROUGE reference fixture used by the Rust tests.
#
# Run from the repository root (after scripts/setup-venv.sh) with exactly:
#
#     .venv/bin/python scripts/make_rouge_fixture.py
#
# Writes:
#   tests/fixtures/rouge/pairs.jsonl   one {"prediction": ..., "reference": ...} per line
#   tests/fixtures/rouge/expected.json scores from Google's rouge-score 0.1.2
#
# Scores come from rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL",
# "rougeLsum"], use_stemmer=False/True) via scorer.score(target=reference,
# prediction=prediction). rougeLsum splits sentences on "\n" only
# (split_summaries=False, the default). The pair list is fixed (no randomness).
# All scores are written as Python floats (rouge-score returns the int 0 in
# some empty-input branches; those are converted to 0.0).

import json
import os
import sys
from importlib.metadata import version

from rouge_score import rouge_scorer

GENERATED_BY = ".venv/bin/python scripts/make_rouge_fixture.py"
ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
OUT_DIR = os.path.join("tests", "fixtures", "rouge")

# (prediction, reference)
PAIRS = [
    # --- identical / disjoint / partial overlap -------------------------
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("hello world", "hello world"),
    ("apples oranges bananas", "cars trucks buses"),
    ("the quick brown fox", "a lazy dog sleeps"),
    ("the cat sat on the mat", "the cat lay on the rug"),
    ("the quick brown fox jumps over the lazy dog",
     "the quick brown dog jumps on the log"),
    ("police killed the gunman", "the gunman killed police"),
    ("a b c d e f", "f e d c b a"),
    ("one two three", "one two three four five six seven eight"),
    ("one two three four five six seven eight", "one two three"),
    ("word", "word"),
    ("word", "other"),
    # --- repeated words (n-gram clipping) --------------------------------
    ("the the the the the the the", "the cat is on the mat"),
    ("the cat the cat the cat", "the cat sat"),
    ("a a a b b", "a b a b"),
    ("to be or not to be", "to be to be to be"),
    # --- punctuation-only / empty ---------------------------------------
    ("!!! ...", "!!! ..."),
    ("!!! ... ???", "the cat sat"),
    ("the cat sat", "--- ,,, ;;;"),
    ("", "the cat sat on the mat"),
    ("the cat sat on the mat", ""),
    ("", ""),
    ("   ", "  \t "),
    # --- non-ASCII --------------------------------------------------------
    ("café naïve résumé", "cafe naive resume"),
    ("café naïve résumé", "café naïve résumé"),
    ("die Straße ist groß", "die Strasse ist gross"),
    ("東京は日本の首都です", "東京は日本の首都です"),
    ("東京 tokyo 2024 日本", "tokyo 2024 is in japan"),
    ("great game 🎉🏏 well played", "well played 👏 great game"),
    ("Привет мир hello world", "hello мир world"),
    ("Москва is the capital of Россия", "the capital of Russia is Moscow"),
    ("İstanbul ist schön", "istanbul ist schon"),
    # --- numbers, hyphens, apostrophes ------------------------------------
    ("don't stop believing", "do not stop believing"),
    ("a state-of-the-art model", "the state of the art model"),
    ("growth was 3.5% in 2023", "growth of 3 5 percent in 2023"),
    ("it's the team's 100th win", "its the teams 100th win"),
    ("scores: 250/7 (50 ov) vs 248-9", "250 7 50 ov vs 248 9"),
    # --- stemming, short words (<=3 chars are not stemmed) ---------------
    ("running runs ran", "run run run"),
    ("studies studying studied", "study studies"),
    ("was has is", "wa ha is"),
    ("the players were playing", "a player plays"),
    ("dying lying skies news innings", "die lie sky news inning"),
    ("generously happily connected connections", "generous happy connect connection"),
    # --- case -------------------------------------------------------------
    ("THE CAT SAT ON THE MAT", "the cat sat on the mat"),
    ("India Won The Toss", "india won the toss"),
    # --- multi-sentence (rougeLsum, "\n" separated) ----------------------
    ("the cat sat on the mat.\nthe dog barked loudly.\nit rained all day.",
     "the dog barked loudly.\nthe cat sat on the mat.\nit was sunny."),
    ("india won the toss and chose to bat.\nkohli scored a century.\nthe match ended in a draw.",
     "kohli scored a fine century.\nindia won the toss.\nrain forced a draw."),
    ("first sentence here.\nsecond sentence here.",
     "first sentence here.\nsecond sentence here."),
    ("a b c\nd e f", "a b c d e f"),
    ("a b c d e f", "a b c\nd e f"),
    ("a b\n\n\nc d\n", "\na b\nc d"),
    ("the cat\r\nsat on\r\nthe mat", "the cat sat on the mat"),
    ("x y z\nw1 w2 w3\nthe end", "the end\nx y z\nw3 w2 w1"),
    ("a b a\nb a b", "a b\nb a\na b"),
    # --- realistic summaries ---------------------------------------------
    ("Australia beat England by 5 wickets to win the third Test at Headingley.",
     "England lost the third Test at Headingley to Australia by five wickets."),
    ("Joe Root scored 134 as England reached 310 for 4 at stumps on day one.",
     "Root hit a superb 134 to lead England to 310-4 at the close of the first day."),
    ("India chased down 287 with 12 balls to spare, Gill making an unbeaten 104.",
     "Shubman Gill's unbeaten 104 helped India chase 287 with two overs remaining."),
    ("Rain washed out the final session, leaving the match evenly poised.",
     "The final session was lost to rain with the game finely balanced."),
    ("Pakistan were bowled out for 156 after Bumrah took five wickets.",
     "Jasprit Bumrah claimed 5 for 32 as Pakistan collapsed to 156 all out."),
    ("New Zealand won the toss and elected to bowl first under cloudy skies.",
     "New Zealand chose to bowl after winning the toss in overcast conditions."),
    ("The central bank raised interest rates by a quarter point to curb inflation.",
     "Interest rates were increased by 0.25 percentage points as the bank fights inflation."),
    ("Researchers found that the new drug reduced symptoms in most patients.",
     "A new drug reduced symptoms for the majority of patients, researchers said."),
    ("The company reported record profits despite supply chain problems.",
     "Despite ongoing supply chain issues, the firm posted record profits."),
    ("Heavy snow closed schools and roads across the region on Monday.",
     "Schools and roads across the region were shut on Monday by heavy snowfall."),
    ("Stokes hit three sixes in the final over but England fell two runs short.",
     "England lost by two runs despite Ben Stokes smashing three sixes in the last over."),
    ("The match was abandoned without a ball bowled.\nBoth teams shared the points.",
     "Both sides took a point each.\nPersistent rain meant the match was abandoned without a ball bowled."),
]


def as_dict(score):
    return {
        "precision": float(score.precision),
        "recall": float(score.recall),
        "fmeasure": float(score.fmeasure),
    }


def score_all(use_stemmer):
    scorer = rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=use_stemmer)
    pairs = []
    for prediction, reference in PAIRS:
        s = scorer.score(target=reference, prediction=prediction)
        pairs.append({t: as_dict(s[t]) for t in ROUGE_TYPES})
    corpus_mean = {
        t: sum(p[t]["fmeasure"] for p in pairs) / len(pairs) for t in ROUGE_TYPES
    }
    return {"pairs": pairs, "corpus_mean": corpus_mean}


def main():
    if len(sys.argv) != 1:
        sys.exit("usage: " + GENERATED_BY + " (no arguments)")
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "pairs.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for prediction, reference in PAIRS:
            f.write(json.dumps({"prediction": prediction, "reference": reference},
                               ensure_ascii=False) + "\n")
    expected = {
        "generated_by": GENERATED_BY,
        "rouge_score_version": version("rouge-score"),
        "no_stemmer": score_all(False),
        "stemmer": score_all(True),
    }
    with open(os.path.join(OUT_DIR, "expected.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote %d pairs to %s" % (len(PAIRS), OUT_DIR))


if __name__ == "__main__":
    main()
