"""The built-in demo task: turn customer-support messages into a fixed JSON schema.

It is the Space's one-click demo and the fixture for end-to-end tests. The messages are built from templates and slot
fillers (greetings, context, the request itself, urgency and tone cues, small talk, typos, sign-offs, in varying
order) so a model must actually read them to fill the fields. The embedded SmolLM2-135M-Instruct does poorly on it
out of the box; a few minutes of LoRA on a CPU does clearly better (see ``bench/DEMO.md`` for measured figures).

Everything here is pure Python and deterministic for a given ``(n, seed)``: no ML imports.

The schema of an answer (keys always in this order, compact JSON)::

    {"intent": "refund"|"shipping_delay"|"cancel"|"billing"|"technical"|"account",
     "order_id": "A1234"-style string or null,
     "product": product name as written in the catalogue, or null,
     "urgency": "low"|"medium"|"high",
     "sentiment": "negative"|"neutral"|"positive"}
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

INTENTS: tuple[str, ...] = ("refund", "shipping_delay", "cancel", "billing", "technical", "account")
URGENCIES: tuple[str, ...] = ("low", "medium", "high")
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
FIELDS: tuple[str, ...] = ("intent", "order_id", "product", "urgency", "sentiment")

DEMO_SYSTEM_PROMPT = (
    "Turn the support message into JSON with keys intent (refund, shipping_delay, cancel, billing, technical, "
    "account), order_id, product, urgency (low, medium, high), sentiment (negative, neutral, positive). "
    "Use null when absent. Output JSON only."
)

PRODUCTS: tuple[str, ...] = (
    "wireless earbuds", "bluetooth speaker", "standing desk", "office chair", "espresso machine", "air fryer",
    "robot vacuum", "smart watch", "fitness tracker", "electric toothbrush", "hair dryer", "yoga mat",
    "running shoes", "winter jacket", "backpack", "phone case", "laptop stand", "mechanical keyboard",
    "wireless mouse", "gaming headset", "webcam", "desk lamp", "blender", "coffee grinder", "water bottle",
    "kettle", "rice cooker", "baby monitor", "smart thermostat", "security camera", "e-reader", "tablet",
    "portable charger", "usb-c hub", "monitor", "printer", "sofa cover", "duvet set", "cookware set", "tent",
)

# Technical problems only make sense for things with a battery, a plug or an app.
_DEVICES: tuple[str, ...] = tuple(p for p in PRODUCTS if p not in {
    "standing desk", "office chair", "yoga mat", "running shoes", "winter jacket", "backpack", "phone case",
    "laptop stand", "water bottle", "sofa cover", "duvet set", "cookware set", "tent",
})

_ORDER_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I/O: they read like digits

_NAMES = (
    "Maria", "James", "Priya", "Tom", "Aisha", "Lukas", "Chen", "Sofia", "Daniel", "Fatima", "Olivia", "Mateo",
    "Hannah", "Kenji", "Grace", "Omar", "Emma", "Noah", "Zoe", "Ravi", "Lena", "Marco", "Ines", "Sam",
)

_GREETINGS = (
    "Hi,", "Hello,", "Hey there,", "Hi team,", "Hello support,", "Good morning,", "Good afternoon,", "Hi there,",
    "Dear customer service,", "Hey,", "Hello there,", "To whom it may concern,",
)

_SIGNOFFS = ("Thanks,", "Thank you,", "Regards,", "Best,", "Cheers,", "Kind regards,", "Thanks in advance,",
             "Best wishes,")

# How the order id and the product appear inside a sentence. {o} = order id, {p} = product.
_ORDER_REFS = ("order {o}", "order #{o}", "order number {o}", "order no. {o}", "order ({o})", "order ref {o}")
_PRODUCT_REFS = ("the {p}", "my {p}", "the {p} I bought", "the new {p}", "a {p}", "the {p} I ordered")

# Core request sentences per intent. {P} = product phrase, {O} = order phrase ("order A1234"), {D} = a number of
# days, {M} = an amount. Each template declares which slots it needs; the generator picks templates that fit the
# slots it drew, so every field in the answer is grounded in the text.
_CORE: dict[str, tuple[str, ...]] = {
    "refund": (
        "I would like a refund for {P}.",
        "I returned {P} two weeks ago and still haven't received my money back.",
        "Can I get my money back for {O}? {P} is not what I expected.",
        "I want to return {P} and get a full refund.",
        "Please refund {O}, {P} arrived damaged.",
        "{P} isn't working out for me, how do I get a refund?",
        "I sent back {O} last week. When will the refund be processed?",
        "I'd like to request a refund, the item in {O} doesn't match the description.",
        "I was promised a refund for {P} but nothing has shown up on my card yet.",
        "How do I return {P} for a refund? It's still in the box.",
        "{P} broke after two days, I just want my money back.",
        "I need a refund for {O}, I received the wrong size.",
    ),
    "shipping_delay": (
        "My {O} still hasn't arrived.",
        "Where is {P}? It was supposed to be here {D} days ago.",
        "The tracking for {O} hasn't updated in {D} days.",
        "I'm still waiting for {P}, the delivery date has passed.",
        "{O} says delivered but there is nothing at my door.",
        "It has been {D} days and {P} has not shipped yet.",
        "Can you check on {O}? The package seems stuck in transit.",
        "My package with {P} is late, the estimated delivery was last week.",
        "Any update on the shipment of {O}? It's been {D} days.",
        "{P} was meant to arrive on Monday and it's still not here.",
        "The courier keeps postponing the delivery of {O}.",
    ),
    "cancel": (
        "Please cancel {O}.",
        "I want to cancel my order for {P}.",
        "Can you cancel {O} before it ships?",
        "I ordered {P} by mistake, please cancel it.",
        "I changed my mind about {P}, can the order be cancelled?",
        "Please stop {O}, I no longer need it.",
        "I'd like to cancel my subscription.",
        "How do I cancel {O}? I found {P} cheaper elsewhere.",
        "Cancel the order for {P} please, I placed it twice.",
        "I need to cancel my membership, please don't renew it.",
    ),
    "billing": (
        "I was charged twice for {O}.",
        "My card was charged {M} but {P} was on sale for less.",
        "There is a charge of {M} on my statement that I don't recognise.",
        "The invoice for {O} shows the wrong amount.",
        "I was billed {M} for shipping on {O} even though it should be free.",
        "Why was I charged again this month? I thought my plan was annual.",
        "The discount code didn't apply to {P} and I paid full price.",
        "I need a corrected invoice for {O}, the VAT number is missing.",
        "You charged my old card instead of the new one for {O}.",
        "My bank shows a pending charge of {M} that never went away.",
        "I got billed {M} for {P} but the price on the site was lower.",
    ),
    "technical": (
        "{P} won't turn on.",
        "{P} keeps disconnecting from my phone.",
        "The app crashes every time I try to pair {P}.",
        "{P} makes a loud noise when I use it.",
        "The battery on {P} drains in an hour.",
        "{P} shows an error light and won't start.",
        "I can't get {P} to connect to wifi.",
        "After the last update {P} stopped working properly.",
        "The screen on {P} flickers constantly.",
        "{P} from {O} won't charge at all.",
        "The buttons on {P} are unresponsive.",
        "{P} overheats after a few minutes.",
    ),
    "account": (
        "I can't log in to my account.",
        "I forgot my password and the reset email never arrives.",
        "How do I change the email address on my account?",
        "My account got locked after too many login attempts.",
        "Please delete my account and all my data.",
        "I want to update my shipping address in my profile.",
        "I keep getting an error when I try to sign in.",
        "Someone may have accessed my account, I saw an order I didn't place.",
        "The two-factor code never reaches my phone, so I can't get into my account.",
        "How do I merge my two accounts?",
        "I can't see my order history in my account anymore.",
    ),
}

# How likely a message of each intent mentions an order id / a product (when a template allows it).
_P_ORDER = {"refund": 0.7, "shipping_delay": 0.8, "cancel": 0.7, "billing": 0.6, "technical": 0.3, "account": 0.15}
_P_PRODUCT = {"refund": 0.75, "shipping_delay": 0.6, "cancel": 0.5, "billing": 0.35, "technical": 0.95, "account": 0.2}

# Where an intent's core sentence has no {O}/{P} slot, the id or product may still come up in an extra sentence.
_ORDER_EXTRA = ("It was {O}.", "The order number is {o}.", "This is about {O}.", "For reference: {o}.",
                "Order id: {o}.")
_PRODUCT_EXTRA = ("It's about {P}.", "This concerns {P}.", "The item is {P}.", "I'm writing about {P}.")
_ACCOUNT_PRODUCT_EXTRA = ("I was trying to order {P}.", "I wanted to buy {P}.", "I need it to reorder {P}.")

_URGENCY_CUES = {
    "high": (
        "This is urgent.", "Please fix this ASAP.", "I need this sorted today.", "I need an answer immediately.",
        "This is the third time I'm writing about this!", "Please respond right away.",
        "I need it by tomorrow for my daughter's birthday.", "URGENT, please help now.",
        "I can't wait any longer on this.", "Please treat this as a priority.",
    ),
    "low": (
        "No rush on this.", "Whenever you get a chance is fine.", "It's not urgent.", "Just curious, no hurry.",
        "Take your time.", "Reply when you can, it's not pressing.", "No need to hurry with this one.",
    ),
    "medium": (
        "Could you look into it this week?", "A reply in the next few days would be great.",
        "It would be good to sort this out soon.", "Please get back to me when you can this week.",
        "I'd like this resolved in the next few days.", "Hoping to hear back soon.",
    ),
}

_SENTIMENT_CUES = {
    "negative": (
        "I'm really frustrated.", "This is unacceptable.", "Very disappointed with your service.",
        "Honestly this is ridiculous.", "I'm extremely unhappy about this.", "Terrible experience so far.",
        "I'm fed up with this.", "Worst customer service I've dealt with.", "I'm so annoyed right now.",
    ),
    "positive": (
        "I love your products, so I'm sure we can sort it out.", "You guys have always been great.",
        "Thanks so much, your support team is wonderful.", "Really happy with your shop otherwise!",
        "I appreciate your help, you've been fantastic before.", "Big fan of your store.",
        "Everything else has been perfect, thank you!",
    ),
    "neutral": ("", "", "", "Just letting you know.", "Thanks for checking.", "Here are the details."),
}

_CONTEXT = (
    "I've been a customer for a few years.", "I ordered from your website last month.",
    "I bought this as a gift.", "I placed the order through the app.", "This is my first order with you.",
    "My partner placed the order on my behalf.", "I'm writing from my work email.", "I used the express checkout.",
    "I already checked the FAQ page.", "I tried calling but the line was busy.", "I live in a small apartment.",
    "I paid with PayPal.", "I ordered two other things at the same time.",
)

_ASKS = (
    "What can you do?", "Can you help?", "Please advise.", "What are my options?", "Can someone get back to me?",
    "Let me know how to proceed.", "Is there anything I need to do?", "Please help.",
)

_TYPO_SWAPS = {
    "receive": "recieve", "received": "recieved", "definitely": "definately", "cancel": "cancell",
    "address": "adress", "really": "realy", "order": "oder", "would": "woud", "please": "pls",
    "because": "becuase", "account": "acount", "you": "u", "thanks": "thx", "charged": "chargd",
    "password": "pasword", "still": "stil", "waiting": "wating", "days": "dayz",
}


def _order_id(rng: random.Random) -> str:
    return f"{rng.choice(_ORDER_LETTERS)}{rng.randint(1000, 99999) if rng.random() < 0.2 else rng.randint(1000, 9999)}"


def _needs(template: str) -> tuple[bool, bool]:
    return "{O}" in template, "{P}" in template


def _capitalise_first(text: str) -> str:
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1 :]
        if not ch.isspace():
            return text
    return text


def _noisy(text: str, rng: random.Random, protected: Sequence[str], typo_rate: float, lower: bool) -> str:
    """Sprinkle typos over the filler words (never over the order id or product), optionally lowercase it all."""
    keep = {w.lower() for item in protected for w in re.findall(r"[\w#.-]+", item)}
    out = []
    for token in re.split(r"(\s+)", text):
        core = token.strip(".,!?:;()")
        low = core.lower()
        if core and low not in keep and typo_rate and rng.random() < typo_rate:
            if low in _TYPO_SWAPS:
                token = token.replace(core, _TYPO_SWAPS[low] if core.islower() else _TYPO_SWAPS[low].capitalize())
            elif len(core) > 4 and core.isalpha():
                i = rng.randrange(1, len(core) - 2)
                token = token.replace(core, core[:i] + core[i + 1] + core[i] + core[i + 2 :])
        out.append(token)
    text = "".join(out)
    if lower:
        # lowercase the filler but keep the order id as written (ids are case-sensitive)
        pieces = re.split(r"(\b[A-Z]\d{4,5}\b)", text)
        text = "".join(p if re.fullmatch(r"[A-Z]\d{4,5}", p) else p.lower() for p in pieces)
    return text


def _one_row(rng: random.Random) -> dict:
    intent = rng.choice(INTENTS)
    urgency = rng.choices(URGENCIES, weights=(0.3, 0.4, 0.3))[0]
    sentiment = rng.choices(SENTIMENTS, weights=(0.4, 0.35, 0.25))[0]
    want_order = rng.random() < _P_ORDER[intent]
    want_product = rng.random() < _P_PRODUCT[intent]

    # pick a core sentence; prefer one whose slots match what we drew, otherwise add the slot in an extra sentence
    templates = list(_CORE[intent])
    rng.shuffle(templates)
    core = next(
        (t for t in templates if _needs(t) == (want_order, want_product)),
        next((t for t in templates if (not _needs(t)[0] or want_order) and (not _needs(t)[1] or want_product)),
             templates[0]),
    )
    needs_o, needs_p = _needs(core)
    want_order, want_product = want_order or needs_o, want_product or needs_p

    order_id = _order_id(rng) if want_order else None
    product = rng.choice(_DEVICES if intent == "technical" else PRODUCTS) if want_product else None
    o_phrase = rng.choice(_ORDER_REFS).format(o=order_id) if order_id else ""
    p_phrase = rng.choice(_PRODUCT_REFS).format(p=product) if product else ""
    core_text = _capitalise_first(core.format(O=o_phrase, P=p_phrase, D=rng.randint(3, 21),
                                              M=f"${rng.randint(9, 499)}.{rng.choice(('00', '99', '49', '95'))}"))

    body: list[str] = [core_text]
    if order_id and not needs_o:
        body.append(rng.choice(_ORDER_EXTRA).format(o=order_id, O=o_phrase))
    if product and not needs_p:
        extra = _ACCOUNT_PRODUCT_EXTRA if intent == "account" else _PRODUCT_EXTRA
        body.append(_capitalise_first(rng.choice(extra).format(P=p_phrase)))
    if len(body) > 1 and rng.random() < 0.4:
        rng.shuffle(body)

    urgency_cue = rng.choice(_URGENCY_CUES[urgency])
    sentiment_cue = rng.choice(_SENTIMENT_CUES[sentiment])
    cues = [c for c in (urgency_cue, sentiment_cue) if c]
    rng.shuffle(cues)

    parts: list[str] = []
    if rng.random() < 0.45:
        parts.append(rng.choice(_CONTEXT))
    if rng.random() < 0.5:  # cues before or after the request
        parts = cues[:1] + parts + body + cues[1:]
    else:
        parts = parts + body + cues
    if rng.random() < 0.5:
        parts.append(rng.choice(_ASKS))
    while len(" ".join(parts).split()) < 20:  # pad short messages with realistic filler
        filler = rng.choice(_CONTEXT + _ASKS)
        if filler not in parts:
            parts.insert(rng.randrange(0, len(parts) + 1), filler)

    greeting = rng.choice(_GREETINGS) if rng.random() < 0.7 else ""
    signoff = ""
    if rng.random() < 0.6:
        name = rng.choice(_NAMES)
        signoff = f"{rng.choice(_SIGNOFFS)} {name}" if rng.random() < 0.7 else f"- {name}"
    sep = "\n\n" if rng.random() < 0.3 else " "
    text = sep.join(p for p in (greeting, " ".join(parts), signoff) if p)
    protected = [x for x in (order_id, product) if x]
    text = _noisy(text, rng, protected, typo_rate=rng.choice((0.0, 0.0, 0.02, 0.05)), lower=rng.random() < 0.12)

    answer = {"intent": intent, "order_id": order_id, "product": product, "urgency": urgency, "sentiment": sentiment}
    return {
        "messages": [
            {"role": "system", "content": DEMO_SYSTEM_PROMPT},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(answer, separators=(",", ":"))},
        ]
    }


def generate_demo_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` chat rows (system, user message, assistant JSON); the same ``(n, seed)`` always gives the same rows.

    The first ``k`` rows of ``generate_demo_rows(n, seed)`` equal ``generate_demo_rows(k, seed)``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    rng = random.Random(f"finetune-studio-demo:{seed}")  # noqa: S311 - seeded demo rows, not secrets
    return [_one_row(rng) for _ in range(n)]


def write_demo_dataset(path: str | Path, n: int = 400, seed: int = 0) -> Path:
    """Write ``n`` demo rows as JSONL (one ``{"messages": [...]}`` per line) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for row in generate_demo_rows(n, seed):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p


# ---- scoring ---------------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def extract_json_object(text: str) -> dict | None:
    """The first JSON object in ``text`` (code fences and surrounding prose tolerated), or None."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for cand in candidates:
        start = cand.find("{")
        while start != -1:
            try:
                obj, _ = decoder.raw_decode(cand, start)
            except json.JSONDecodeError:
                start = cand.find("{", start + 1)
                continue
            if isinstance(obj, dict):
                return obj
            start = cand.find("{", start + 1)
    return None


def _norm(field: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        v = " ".join(value.strip().split())
        if v.lower() in ("", "null", "none", "n/a"):
            return None
        if field == "order_id":
            return v.lstrip("#").upper()
        return v.lower()
    return value


def score_prediction(prediction: str, reference: str) -> dict:
    """Compare one model answer with the reference JSON.

    Returns ``{"valid_json": bool, "fields": {field: bool, ...}, "field_accuracy": float, "exact_match": bool}``.
    Strings are compared case- and whitespace-insensitively (order ids also ignore a leading '#'); "null"/"none"
    and a missing key count as null. An answer with no parseable object gets every field wrong.
    """
    ref = extract_json_object(reference) if isinstance(reference, str) else reference
    if not isinstance(ref, dict):
        raise ValueError(f"reference is not a JSON object: {reference!r}")
    pred = extract_json_object(prediction)
    fields = {f: (pred is not None and _norm(f, pred.get(f)) == _norm(f, ref.get(f))) for f in FIELDS}
    return {
        "valid_json": pred is not None,
        "fields": fields,
        "field_accuracy": sum(fields.values()) / len(FIELDS),
        "exact_match": all(fields.values()),
    }


def score_predictions(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Aggregate scores: ``json_valid_rate``, ``field_accuracy`` (mean over fields and rows), ``exact_match_rate``,
    ``per_field`` accuracy and ``n``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    n = len(predictions)
    if n == 0:
        return {"n": 0, "json_valid_rate": 0.0, "field_accuracy": 0.0, "exact_match_rate": 0.0,
                "per_field": dict.fromkeys(FIELDS, 0.0)}
    scores = [score_prediction(p, r) for p, r in zip(predictions, references)]
    per_field = {f: sum(s["fields"][f] for s in scores) / n for f in FIELDS}
    return {
        "n": n,
        "json_valid_rate": sum(s["valid_json"] for s in scores) / n,
        "field_accuracy": sum(per_field.values()) / len(FIELDS),
        "exact_match_rate": sum(s["exact_match"] for s in scores) / n,
        "per_field": per_field,
    }


def demo_references(rows: Iterable[dict]) -> list[str]:
    """The assistant answers of demo rows (the references for scoring)."""
    return [row["messages"][-1]["content"] for row in rows]


def demo_prompts(rows: Iterable[dict]) -> list[list[dict]]:
    """The rows without their assistant answer: what the model is asked."""
    return [[m for m in row["messages"] if m["role"] != "assistant"] for row in rows]
