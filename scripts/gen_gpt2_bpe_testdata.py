#!/usr/bin/env python3
# Makes the data of barbell's GPT-2 tokenizer test (tests/data/gpt2_bpe/): a corpus, a small byte-level BPE
# vocabulary trained on it, and what two reference implementations make of every record of the corpus.
#
#   python3 scripts/gen_gpt2_bpe_testdata.py [--corpus] [--train] [--out DIR]
#       --corpus: (re)write DIR/corpus.txt (deterministic); --train: (re)train DIR/vocab.json and merges.txt
#       with `tokenizers`; always: DIR/expected.txt and DIR/decode.txt from the references.
#   python3 scripts/gen_gpt2_bpe_testdata.py --from-tiktoken gpt2.tiktoken --out DIR [--extra FILE...]
#       GPT-2's real vocabulary from a tiktoken rank file (openai-whisper ships whisper/assets/gpt2.tiktoken):
#       writes DIR/vocab.json and DIR/merges.txt (the merges recovered from the ranks), copies the corpus (plus
#       the --extra files appended to it), and checks tiktoken against the other references too.
#
# Needs: tokenizers, transformers<5 (its GPT2Tokenizer is pure Python on the `regex` module; from 5.0 it is a
# wrapper of `tokenizers`), regex; tiktoken for --from-tiktoken.
#
# Records: the corpus split after every b"\n" (each line keeps its newline), then the whole file as one
# record (newline runs, indentation). Lines that are not valid UTF-8 cannot be given to either reference as
# they stand (both take str): for them the reference is GPT2Tokenizer's own pattern, byte encoder, bpe() and
# vocabulary on the line decoded with surrogateescape, each invalid byte a lone surrogate (category Cs, so
# neither letter, number nor space) that encodes back to that byte. Valid lines must give the same ids under
# tokenizers, GPT2Tokenizer.encode and that surrogateescape path, or this script stops.
#
# expected.txt: "records N", then per record "ids<TAB>piece lengths" (space-separated; the byte lengths of the
# pre-tokenization pieces, in order). decode.txt: "ids<TAB>hex of the bytes they decode to" for
# random id sequences (split characters included), from GPT2Tokenizer's byte decoder.
import argparse
import base64
import json
import random
import shutil
import sys
from pathlib import Path

import regex

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests/data/gpt2_bpe"

# Written to exercise every branch of GPT-2's pattern: contractions (and what is not one), digits of several
# scripts, punctuation runs, every kind of white-space run, newlines and CRLF, accents (precomposed and
# combining), scripts with combining marks, CJK, emoji (ZWJ sequences, skin tones, flags), control
# characters and bytes that are not UTF-8.
HAND_LINES = [
    b"Hello, world! This is a test of GPT-2's byte-level BPE tokenizer.",
    b"I'm sure you're right: we've seen it, they'll say it, he'd know, she's here, it's fine.",
    b"Don't, can't, won't, shouldn't've, y'all, o'clock, rock 'n' roll, 'tis, the dog's bone.",
    b"IT'S LOUD: I'M, YOU'RE, WE'VE, THEY'LL, HE'D (upper-case contractions are not contractions).",
    b"''s '''quoted''' 's 't 're 've 'm 'll 'd 'x 'S 'T 'Re ' s",
    b"Mixed: it's'' ''it's ''''s 'ss 'tt 'rel 'vex 'mm 'lll 'dd",
    b"1234567890 3.14159 2.718e-10 1,000,000 -42 +7 0x1F 0b1010 007 2nd 3rd 4th x2 v1.2.3",
    b"Digits of other scripts: \xd9\xa3\xd9\xa4\xd9\xa5 \xe0\xa5\xa7\xe0\xa5\xa8 \xe2\x85\xab \xc2\xbd \xc2\xb2 \xe2\x91\xa0 \xef\xbc\x91\xef\xbc\x92\xef\xbc\x93",
    b"Punctuation!!! ??? ... --- *** ((a+b)*c)/d [x] {y} <z> a->b a=>b a::b a.b; c,d: e|f & g^h ~i `j` @k #l $m %n",
    b"#include <vector>\tint main() { return 0; }  // comment",
    b"email@example.com https://example.org/path?q=1&r=2#frag C:\\Users\\me",
    b"a b  c   d    e     f",
    b"\t\ttab indented\t\tand\ttabs\t",
    b"trailing spaces   ",
    b"   leading spaces",
    b" \t mixed \t white \t space \t ",
    b"vertical\x0btab form\x0cfeed carriage\rreturn",
    b"crlf line ending\r",
    b"no-break\xc2\xa0space, ideographic\xe3\x80\x80space, en\xe2\x80\x82space, thin\xe2\x80\x89space, NEL\xc2\x85here",
    b"line\xe2\x80\xa8separator and paragraph\xe2\x80\xa9separator, narrow\xe2\x80\xafno-break, math\xe2\x81\x9fspace",
    b"file\x1cgroup\x1drecord\x1eunit\x1fseparators are not white space",
    b"zero\xe2\x80\x8bwidth\xe2\x80\x8cjoiners\xe2\x80\x8dhere\xef\xbb\xbfbom",
    b"control \x00 nul \x07 bell \x1b[31mred\x1b[0m \x7f del",
    b"caf\xc3\xa9 na\xc3\xafve \xc3\x85ngstr\xc3\xb6m Stra\xc3\x9fe \xc5\x93uvre fa\xc3\xa7ade se\xc3\xb1or",
    b"decomposed: cafe\xcc\x81 nai\xcc\x88ve A\xcc\x8angstro\xcc\x88m",
    b"\xce\x95\xce\xbb\xce\xbb\xce\xb7\xce\xbd\xce\xb9\xce\xba\xce\xac \xd0\xa0\xd1\x83\xd1\x81\xd1\x81\xd0\xba\xd0\xb8\xd0\xb9 \xd1\x82\xd0\xb5\xd0\xba\xd1\x81\xd1\x82 \xd7\xa2\xd7\x91\xd7\xa8\xd7\x99\xd7\xaa \xd8\xa7\xd9\x84\xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a\xd8\xa9",
    "हिन्दी भाषा ภาษาไทย ქართული Հայերեն ᏣᎳᎩ".encode(),
    "日本語のテキストです。中文字符，标点符号！한국어 문장입니다.".encode(),
    "ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ１２３ ﾊﾝｶｸ".encode(),
    "emoji 😀 👍🏽 👨‍👩‍👧 🇫🇷🇯🇵 🙂🙂🙂 ❤️ ✅ 🤖".encode(),
    "math ∑∫√∞≈≠ ∀x∈ℝ: x²≥0, €100 £5 ¥300 ©®™ — “quotes” ‘single’ it’s «guillemets»".encode(),
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕕𝕠𝕦𝕓𝕝𝕖 𝒮𝒸𝓇𝒾𝓅𝓉 𐍈 𓀀 ℵ₀".encode(),
    b"invalid: \xff \xfe\xfe abc\x80def \xe2\x82 truncated euro, \xc0\xaf overlong, \xed\xa0\x80 surrogate",
    b"more invalid: \xf4\x90\x80\x80 above U+10FFFF, caf\xc3 end, \xc3( bad pair, caf\xe9 latin-1",
    b" \xff word \x80\x81\x82 ' \xff's 's\xff \xff123 123\xff \xf0\x9f\x98 cut emoji",
    b"\xc2 \xe0\xa0 \xf0\x90\x80 \xf8\x88\x80\x80\x80 \xfc\x84\x80\x80\x80\x80 \xa0\xa1 lone bytes",
    b" " * 120 + b"many spaces then text",
    b"a" * 300,
    b"9" * 150,
    b"!" * 80 + b"?" * 80,
    b"\t" * 20 + b" " * 3 + b"x",
    b"",
    b"   ",
    b"x",
    b" ",
    b"'",
    b"''",
    b"'s",
]

# Fragments the random lines are made of, weighted towards the tricky ones.
FRAGMENTS = [
    "the", "The", " the", "and", " of", "tokenizer", "GPT", "Hugging", "Face", "barbell", "model", "train",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'", "''", "n't", "’s",
    "0", "1", "42", "2024", "3.14", "1e-5", "١٢", "½", "Ⅷ",
    " ", "  ", "   ", "\t", "\t ", " \t", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "\u2009", "\x85", "\x1c",
    ".", ",", "!", "?", "...", "-", "--", "(", ")", "[", "]", "{", "}", "<", ">", "/", "\\", "#", "@", "$",
    "%", "^", "&", "*", "_", "=", "+", "|", "~", "`", '"', ":", ";",
    "é", "e\u0301", "ü", "ß", "ø", "Ω", "λ", "ж", "я", "ع", "ש", "क्ष", "ไทย", "日", "本", "語", "中", "文",
    "한", "글", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "∑", "√", "€", "—", "“", "”", "\u200b", "\u200d",
]
INVALID = [b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
           b"\xf0\x9f\x98", b"\xe9"]


def make_corpus():
    rng = random.Random(20240520)
    lines = list(HAND_LINES)
    for i in range(1000):
        parts = []
        broken = rng.random() < 0.2  # a fifth of the lines hold bytes that are not UTF-8
        for _ in range(rng.randint(1, 40)):
            if broken and rng.random() < 0.08:
                parts.append(rng.choice(INVALID))
            else:
                parts.append(rng.choice(FRAGMENTS).encode())
        lines.append(b"".join(parts))
    # Prose and code: this repository's architecture notes (barbell's own text).
    lines.extend((REPO / "docs/architecture.md").read_bytes().split(b"\n"))
    return b"\n".join(lines) + b"\n"


def records_of(data):
    recs = [line + b"\n" for line in data.split(b"\n")[:-1]]
    tail = data.split(b"\n")[-1]
    if tail:
        recs.append(tail)
    recs.append(data)
    return recs


def train(out, data):
    from tokenizers import ByteLevelBPETokenizer

    lines = []
    for line in data.split(b"\n"):
        try:
            lines.append(line.decode("utf-8") + "\n")
        except UnicodeDecodeError:
            pass
    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(lines, vocab_size=1500, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"trained: {len(vocab)} tokens, {len(merges)} merges", file=sys.stderr)


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def from_tiktoken(path, out):
    ranks = {}
    for line in Path(path).read_text().splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    enc = bytes_to_unicode()

    def split(token, max_rank):  # tiktoken's byte-pair merge restricted to ranks below max_rank
        parts = [bytes([b]) for b in token]
        while True:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < max_rank and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                return parts
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]

    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab["".join(enc[b] for b in token)] = rank
        if len(token) > 1:
            parts = split(token, rank)
            assert len(parts) == 2, (token, parts)
            merges.append(" ".join("".join(enc[b] for b in p) for p in parts))
    vocab["<|endoftext|>"] = len(ranks)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"from {path}: {len(vocab)} tokens, {len(merges)} merges", file=sys.stderr)
    import tiktoken

    return tiktoken.Encoding(name="gpt2_from_file",
                             pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--corpus", action="store_true")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--from-tiktoken")
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    tt = None
    if args.from_tiktoken:
        data = (DEFAULT_OUT / "corpus.txt").read_bytes()
        for f in args.extra:
            data += Path(f).read_bytes()
            if not data.endswith(b"\n"):
                data += b"\n"
        (out / "corpus.txt").write_bytes(data)
        tt = from_tiktoken(args.from_tiktoken, out)
    else:
        if args.corpus or not (out / "corpus.txt").exists():
            (out / "corpus.txt").write_bytes(make_corpus())
        data = (out / "corpus.txt").read_bytes()
        if args.train or not (out / "vocab.json").exists():
            train(out, data)

    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import GPT2Tokenizer

    slow = GPT2Tokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    assert not getattr(slow, "is_fast", False)
    fast = Tokenizer(BPE.from_file(str(out / "vocab.json"), str(out / "merges.txt")))
    fast.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    fast.decoder = decoders.ByteLevel()
    byte_decoder = slow.byte_decoder

    def slow_surrogateescape(text):
        ids, lens = [], []
        for piece in regex.findall(slow.pat, text):
            raw = piece.encode("utf-8", "surrogateescape")
            lens.append(len(raw))
            mapped = "".join(slow.byte_encoder[b] for b in raw)
            ids.extend(slow.encoder[t] for t in slow.bpe(mapped).split(" "))
        return ids, lens

    recs = records_of(data)
    lines = [f"records {len(recs)}"]
    n_valid = n_invalid = 0
    for rec in recs:
        text = rec.decode("utf-8", "surrogateescape")
        ids, lens = slow_surrogateescape(text)
        assert sum(lens) == len(rec)
        try:
            rec.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
        if valid:
            n_valid += 1
            fast_ids = fast.encode(text).ids
            slow_ids = slow.encode(text) if "<|endoftext|>" not in text else ids
            assert fast_ids == ids, f"tokenizers and GPT2Tokenizer differ on {rec[:80]!r}"
            assert slow_ids == ids, f"GPT2Tokenizer.encode and its _tokenize path differ on {rec[:80]!r}"
            if tt is not None:
                assert tt.encode_ordinary(text) == ids, f"tiktoken differs on {rec[:80]!r}"
            assert fast.decode(ids, skip_special_tokens=False) == text
        else:
            n_invalid += 1
        assert bytes(byte_decoder[c] for c in "".join(slow.decoder[i] for i in ids)) == rec
        lines.append(" ".join(map(str, ids)) + "\t" + " ".join(map(str, lens)))
    (out / "expected.txt").write_text("\n".join(lines) + "\n")

    rng = random.Random(7)
    ids_all = sorted(slow.decoder)
    dec = []
    for _ in range(300):
        ids = [rng.choice(ids_all) for _ in range(rng.randint(1, 12))]
        raw = bytes(byte_decoder[c] for c in "".join(slow.decoder[i] for i in ids))
        # The references' decode is these bytes read as UTF-8 with replacement.
        assert fast.decode(ids, skip_special_tokens=False) == raw.decode("utf-8", "replace")
        assert slow.decode(ids) == raw.decode("utf-8", "replace")
        dec.append(" ".join(map(str, ids)) + "\t" + raw.hex())
    (out / "decode.txt").write_text("\n".join(dec) + "\n")
    total = sum(len(r) for r in recs[:-1])
    print(f"{out}: {len(recs)} records ({n_valid} valid UTF-8, {n_invalid} not), {total} bytes of corpus; "
          f"tokenizers, GPT2Tokenizer{' and tiktoken' if tt else ''} agree on every valid record", file=sys.stderr)


if __name__ == "__main__":
    main()
