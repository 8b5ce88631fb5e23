"""Reference token ids from transformers' CLIPTokenizer, for tests/tokenizer.rs.

Writes `ref/tokenizer.json`: the prompts, and for each tokenizer folder the ids exactly as SDXL's
pipeline asks for them (`padding="max_length", max_length=77, truncation=True`) and untruncated
(`padding="longest"`, what diffusers decodes for its "prompt too long" warning).

Folders: `tiny-sdxl/tokenizer` and `tokenizer_2` (the layout of a real download: vocab.json +
merges.txt built from the real 49,408-token CLIP vocabulary, pad `<|endoftext|>` and `!`), and
`tiny-sdxl-saved/tokenizer` and `tokenizer_2` (transformers 5's tokenizer.json layout).
"""

import json
from pathlib import Path

FOLDERS = [
    "tiny-sdxl/tokenizer",
    "tiny-sdxl/tokenizer_2",
    "tiny-sdxl-saved/tokenizer",
    "tiny-sdxl-saved/tokenizer_2",
]

LONG = (
    "a highly detailed photograph of sks dog sitting on a wooden bench in a sunny park, "
    "golden hour lighting, shallow depth of field, bokeh, 85mm lens, f/1.8, sharp focus, "
    "award winning, trending on artstation, intricate details, hyperrealistic, 8k uhd, "
    "dslr, soft lighting, high quality, film grain, Fujifilm XT3, masterpiece, best quality, "
    "ultra-detailed, cinematic composition, volumetric light, ray tracing, octane render"
)

PROMPTS = [
    # Plain prompts, the DreamBooth identifier forms, mixed case.
    "a photo of sks dog",
    "A photo of SKS Dog",
    "a photo of ikat cat on the beach",
    "a [V] dog in the snow",
    "a photo of [V] [V] [v]",
    "<sks> plushie, grey sloth",
    "ThIs Is MiXeD CaSe TeXt",
    "UPPERCASE PROMPT WITH NUMBERS 123",
    "a grey sloth plushie",
    # Punctuation and digits.
    "hello, world! how are you?",
    "wow!!! really?! yes!!",
    "!",
    "!!!",
    "a!b!c",
    "1024x1024, 8k, 4:3 aspect, 3.14159",
    "2024-01-01 12:30:45",
    "(masterpiece:1.2), ((best quality)), [worst quality]",
    "<lora:moslora_sks:0.8> a dog",
    "email me at someone@example.com or visit https://example.com/path?q=1&x=2",
    "#hashtag @mention $100 50% off ~tilde^caret",
    "snake_case-and-kebab-case/with/slashes\\backslash",
    "a...b,,,c;;;d:::e",
    "\"quoted\" 'single quoted' `backticks`",
    "emoji-free :) :( ;-) <3",
    "---===***+++",
    "1 2 3 4 5 6 7 8 9 0",
    "123456789012345678901234567890",
    # Apostrophes and contractions.
    "the dog's toy",
    "it's not what it isn't",
    "they're here and we're there",
    "I've, you'll, he'd, I'm",
    "DON'T SHOUT, IT'S LOUD",
    "rock 'n' roll",
    "the dog\u2019s toy (curly apostrophe)",
    "''quoted twice''",
    # Whitespace: repeated, tabs, newlines, leading and trailing, unicode spaces.
    "a   photo    of     sks dog",
    "a\tphoto\tof\tsks\tdog",
    "a photo\nof sks\n\ndog",
    "line one\r\nline two\r\n",
    "   leading and trailing spaces   ",
    " \t\n ",
    "no\u00a0break\u00a0space and ideographic\u3000space",
    "zero\u200bwidth\u200bspace",
    "form\x0cfeed and vertical\x0btab",
    # Accents, NFC, other scripts.
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",
    "cafe\u0301 (combining accent)",
    "na\u00efve fa\u00e7ade, \u00c9COLE, \u00dcBER, stra\u00dfe",
    "\u0130stanbul and \u0131",
    "\u0391\u0398\u0397\u039d\u0391 \u03bf\u03b4\u03cc\u03c2 \u03a3\u039f\u03a6\u039f\u03a3",
    "\u041c\u043e\u0441\u043a\u0432\u0430 \u0437\u0438\u043c\u043e\u0439",
    "\u6771\u4eac\u30bf\u30ef\u30fc\u306e\u5199\u771f",
    "\u4e00\u53ea\u53ef\u7231\u7684\u732b\u54aa",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u092a\u093e\u0920",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "\uff26\uff35\uff2c\uff2c\uff37\uff29\uff24\uff34\uff28 \uff11\uff12\uff13 \uff01",
    "\u2460\u2461\u2462 \u00bd \u00b2 \u2167",
    # Emoji, including multi-codepoint sequences.
    "a dog \U0001f436 and a cat \U0001f431",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467 family",
    "\U0001f44d\U0001f3fd thumbs up",
    "\U0001f1ef\U0001f1f5 flag",
    "\u2764\ufe0f heart",
    # The special tokens written as text.
    "a <|endoftext|> b",
    "<|startoftext|>a dog<|endoftext|>",
    "<|ENDOFTEXT|> and <|StartOfText|>",
    "a<|endoftext|><|endoftext|>b",
    # Empty, single characters.
    "",
    "a",
    "x",
    # Long prompts: truncation at 77 must keep EOS.
    LONG,
    LONG + " " + LONG,
    " ".join(["dog"] * 80),
    " ".join(["dog"] * 75),
    " ".join(["dog"] * 76),
    "!" * 100,
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def make(fx: Path):
    from transformers import CLIPTokenizer

    out = {"prompts": PROMPTS, "tokenizers": {}}
    for folder in FOLDERS:
        tok = CLIPTokenizer.from_pretrained(fx / folder)
        padded = tok(
            PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True
        ).input_ids
        # One prompt at a time: a batch with padding="longest" would pad to the longest prompt.
        unpadded = [tok(p, padding="longest").input_ids for p in PROMPTS]
        for ids in padded:
            assert len(ids) == tok.model_max_length, (folder, len(ids))
        out["tokenizers"][folder] = {
            "pad_id": tok.pad_token_id,
            "bos_id": tok.bos_token_id,
            "eos_id": tok.eos_token_id,
            "model_max_length": tok.model_max_length,
            "ids": padded,
            "unpadded": unpadded,
        }
    (fx / "ref").mkdir(parents=True, exist_ok=True)
    (fx / "ref" / "tokenizer.json").write_text(json.dumps(out, indent=1))
