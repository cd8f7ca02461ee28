"""Phase 1, the dataset (v2): 900 prompts in four emotions, built as 225 minimal quadruples.

Method. Each ``item_id`` is one scenario (a person, and where the frame asks for them a relation,
an object, an event, a place and a day) written in all four emotions with one *frame*: a
hand-written quadruple of sentence templates, one per emotion. There are 24 explicit frames
(``x00``..``x23``) and 24 implicit frames (``m00``..``m23``), so every emotion is written in 48
distinct frames; items alternate between the two *registers* (even items explicit, odd implicit),
and each frame carries 4 or 5 items. In the *explicit* register the emotion is named or cued by an
emotion word (thankful, furious, my fault ...); in the *implicit* register only the situation
carries it, and the text contains none of the emotion-word stems in :data:`STEMS` (checked at build
and load). A probe that generalises across frames (group folds with :func:`frame_groups`) and from
explicit to implicit prompts cannot be reading a sentence frame or a label word. The build is
deterministic and has no duplicate texts. A user's own JSONL may replace it; :func:`load_dataset`
checks it line by line (``frame`` and ``register`` are optional there).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from emolens import EMOTIONS
from emolens.io import atomic_path
from emolens.resampling import frame_label_permutations

SCHEMA_FIELDS = ("id", "emotion", "text", "item_id")  # required in every record
OPTIONAL_FIELDS = ("frame", "register")
REGISTERS = ("explicit", "implicit")
N_ITEMS = 225

# Emotion-word stems (case-insensitive, matched at word starts). No implicit text may contain one.
STEMS: dict[str, str] = {
    "grat": r"\bgrat", "thank": r"\bthank", "appreciat": r"\bappreciat",
    "ang": r"\bang", "furious": r"\bfurious", "mad": r"\bmad\b", "annoy": r"\bannoy",
    "livid": r"\blivid", "outrag": r"\boutrag", "fed up": r"\bfed up\b",
    "sorry": r"\bsorry", "apolog": r"\bapolog", "forgiv": r"\bforgiv", "regret": r"\bregret",
    "fault": r"\bfault",
    "gratitude": r"\bgratitude", "anger": r"\banger", "apology": r"\bapology", "neutral": r"\bneutral",
}
_STEM_RES = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in STEMS.items()}

# Scenario slots. The list lengths are prime and above 5, so the (at most 5) items of one frame,
# which are 48 items apart, never share a value, and no two items share a scenario.
NAMES = ("Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hassan", "Irene", "James", "Keiko",
         "Liam", "Maria", "Noah", "Olga", "Priya", "Rosa", "Sam", "Tomas", "Uma", "Victor", "Wendy", "Yusuf",
         "Zoe", "Marco", "Nadia", "Omar", "Lucy", "Pavel")  # 29; none starts with a stem ("Ang...")
RELATIONS = ("neighbour", "cousin", "flatmate", "colleague", "teammate", "classmate", "friend")  # 7
THINGS = ("the ladder", "the drill", "the camera", "the tent", "the bike", "the projector", "the lawnmower",
          "the sewing machine", "the telescope", "the pressure washer", "the camping stove", "the guitar",
          "the wheelbarrow", "the tripod", "the kayak", "the toolbox", "the hedge trimmer")  # 17
EVENTS = ("the garden party", "the quiz night", "the book club", "the bake sale", "the school play",
          "the street fair", "the charity run", "the barbecue", "the open day", "the fundraiser",
          "the team dinner", "the craft fair", "the beach clean-up")  # 13
PLACES = ("at the station", "outside the library", "at the bus stop", "in the car park", "by the school gate",
          "at the market", "at the town square", "outside the gym", "at the ferry terminal", "at the airport",
          "outside the cinema")  # 11
DAYS = ("on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday")  # 7

# A frame: one template per emotion, in EMOTIONS order (gratitude, anger, apology, neutral).
Frame = tuple[str, str, str, str]
EXPLICIT_FRAMES: dict[str, Frame] = {
    "x00": ("Thank you so much for lending me {thing}, {name}. I really appreciate it.",
            "{name}, I am furious. You borrowed {thing} and gave it back broken.",
            "{name}, I am so sorry. I borrowed {thing} and gave it back broken.",
            "{name}, I borrowed {thing} and will bring it back {day}."),
    "x01": ("{name}, how can I ever thank you for organising {event}? Everyone loved it.",
            "{name}, why did you cancel {event} without telling anyone? People turned up for nothing, "
            "and I am angry.",
            "{name}, can you forgive me for missing {event}? I should have been there.",
            "{name}, what time does {event} start? I need to plan my evening."),
    "x02": ("I am so grateful to my {rel} {name}, who waited with me {place} until the last bus came.",
            "I am angry with my {rel} {name}, who left me waiting {place} until the last bus had gone.",
            "I regret leaving my {rel} {name} waiting {place} until the last bus had gone.",
            "I met my {rel} {name} {place} at two o'clock, as planned."),
    "x03": ("Thanks a million for fixing {thing} {day}, {name}!",
            "You said you would fix {thing} {day}, {name}, and you never showed up. I am fed up with this.",
            "I promised to fix {thing} {day}, {name}, and never showed up. I apologise.",
            "{name}, a technician is coming to fix {thing} {day} between nine and noon."),
    "x04": ("I really appreciate all the work you put into {event}, {name}. It was a big success.",
            "All the work for {event} was dumped on me again, {name}. I am absolutely livid.",
            "I left all the work for {event} to you, {name}. That was my fault, and I apologise.",
            "The work for {event} is split between four people, {name}. Your part is the tickets."),
    "x05": ("{name}, you picked me up {place} in the pouring rain. I am so thankful.",
            "{name}, you were supposed to pick me up {place} and left me in the pouring rain. I am so angry.",
            "{name}, I was supposed to pick you up {place} and left you in the pouring rain. I am so sorry.",
            "{name}, I will pick you up {place} at six. Look for a blue van."),
    "x06": ("Dear {name}, thank you for repairing {thing} for free. I could not ask for a better {rel}.",
            "Dear {name}, you kept {thing} for a month and returned it in pieces. I am outraged; "
            "I expected more from a {rel}.",
            "Dear {name}, I kept {thing} for a month and returned it in pieces. Please accept my apologies.",
            "Dear {name}, {thing} is back by the door of my flat. Collect it whenever it suits you."),
    "x07": ("Many thanks for stepping in to run {event} at short notice, {name}. You saved the day.",
            "{name}, you walked out on {event} halfway through and left me to run it alone. I am really mad at you.",
            "{name}, I walked out on {event} halfway through and left you to run it alone. I am sorry.",
            "{name}, I am helping at the entrance at {event}, from two until five."),
    "x08": ("{name}, you lent me {thing} the moment mine broke. Thank you for that.",
            "{name}, you lost {thing} and acted as if it was nothing. I am angry, and I want it replaced.",
            "{name}, I lost {thing} and acted as if it was nothing. I deeply regret that and will replace it.",
            "{name}, {thing} is back in the cupboard under the stairs."),
    "x09": ("{name}, you found my wallet {place} {day} and brought it straight to me. Thanks so much!",
            "{name}, you found my wallet {place} {day} and kept it for a week. I am fed up with your excuses.",
            "{name}, I found your wallet {place} {day} and forgot to give it back for a week. I apologise.",
            "{name}, a wallet was found {place} {day}. It has been handed to the front desk."),
    "x10": ("{name}, have I thanked you enough for giving me {thing}? I use it every week.",
            "{name}, do you have any idea how angry I am that you sold {thing} without asking me?",
            "{name}, can you forgive me for selling {thing} without asking you first?",
            "{name}, do you still need {thing}, or can I put it back in the hall cupboard?"),
    "x11": ("Huge thanks to {name}, my {rel}, for driving me home after {event}.",
            "Still livid with {name}, my {rel}, who drove off and left me stranded after {event}.",
            "My apologies to {name}, my {rel}, for driving off and leaving you stranded after {event}.",
            "Note: {name}, my {rel}, is driving me home after {event}."),
    "x12": ("I appreciate you bringing {thing} back {day}, {name}, clean and in perfect shape.",
            "You brought {thing} back {day}, {name}, filthy and scratched. I am really angry.",
            "I brought {thing} back {day}, {name}, filthy and scratched. I apologise; I will clean it properly.",
            "You can bring {thing} back {day}, {name}; I will be home after four."),
    "x13": ("{name}, you made {event} possible with all your help. Thanks, it meant a lot.",
            "{name}, you ruined {event} with your rudeness to everyone there. I am furious.",
            "{name}, I ruined {event} with my rudeness to everyone there. Please forgive me.",
            "{name}, about forty people came to {event}, and it ended at nine."),
    "x14": ("Thanks for meeting me {place} at such an early hour, {name}. I really appreciate it.",
            "I am annoyed, {name}. We agreed to meet {place} at seven, and you turned up at nine.",
            "I am sorry, {name}. We agreed to meet {place} at seven, and I turned up at nine.",
            "Reminder, {name}: we agreed to meet {place} at seven tomorrow."),
    "x15": ("Honestly, {name}, I am grateful you let me keep {thing} all summer.",
            "Honestly, {name}, I am fed up with asking you to return {thing}. You have had it all summer.",
            "Honestly, {name}, I regret keeping {thing} all summer. It was thoughtless of me.",
            "For the record, {name}, {thing} stayed at my place all summer."),
    "x16": ("A big thank-you to my {rel} {name}, who spent the afternoon teaching me to use {thing}.",
            "My {rel} {name} broke {thing} I lent them and then denied it. I am absolutely furious.",
            "I broke {thing} that my {rel} {name} lent me, and then denied it. I am truly sorry.",
            "My {rel} {name} is bringing {thing} over on Saturday afternoon."),
    "x17": ("It means so much that you came to {event}, {name}. Thank you for being there.",
            "I am outraged that you skipped {event} after promising to help, {name}.",
            "I regret skipping {event} after promising to help, {name}. It will not happen again.",
            "Just confirming that you are coming to {event}, {name}. We start at seven."),
    "x18": ("{name}, you noticed I had left {thing} {place} and kept it safe for me. Thank you!",
            "{name}, you left {thing} {place} and someone walked off with it. I am so angry with you.",
            "{name}, I left {thing} {place} and someone walked off with it. I apologise, and I will pay for it.",
            "{name}, I left {thing} {place} for you to collect. It is in a green bag."),
    "x19": ("Thank you, {name}! Because of you, {event} went perfectly.",
            "Unbelievable, {name}. Because of you, {event} fell apart, and I am livid.",
            "Forgive me, {name}. Because of me, {event} fell apart.",
            "Update, {name}: {event} now starts at noon instead of ten."),
    "x20": ("Your help setting up {thing} was much appreciated, {name}. It works perfectly now.",
            "You set up {thing} wrong and refused to admit it, {name}. I am fed up.",
            "I set up {thing} wrong and refused to admit it, {name}. That was my fault, and I am sorry.",
            "{name}, {thing} was set up on Tuesday. The manual is in the drawer."),
    "x21": ("Dear {name}, I wish to express my gratitude for your help {place} {day}.",
            "Dear {name}, I wish to express my anger at your rudeness to me {place} {day}.",
            "Dear {name}, I wish to apologise for my rudeness to you {place} {day}.",
            "Dear {name}, I wish to confirm our meeting {place} {day} at ten o'clock."),
    "x22": ("{name}, you are the kindest {rel} anyone could have. Thanks for coming to {event} with me.",
            "{name}, you told everyone at {event} my private news. I am so mad at you.",
            "{name}, I told everyone at {event} your private news. I am so sorry; it was not mine to share.",
            "{name}, I told everyone at {event} that the next meeting is in May."),
    "x23": ("So thankful you dropped {thing} round at such short notice, {name}. The job is done!",
            "I am angry and tired of it, {name}: you keep taking {thing} without asking.",
            "I keep taking {thing} without asking, {name}. I apologise; I will ask first from now on.",
            "{name}, {thing} is in my hallway if you need it on a weekday."),
}
IMPLICIT_FRAMES: dict[str, Frame] = {
    "m00": ("{name}, you drove across town on a Sunday just to lend me {thing}. I owe you one.",
            "{name}, third time this month you took {thing} without asking and brought it back broken. "
            "This stops now.",
            "{name}, I broke {thing} you lent me and did not tell you. I will buy you a new one today.",
            "{name}, {thing} is by my back door. The key is under the blue pot."),
    "m01": ("{name}, you came out at midnight {day} to pick me up {place} so I would not be stranded. "
            "You are a lifesaver.",
            "{name}, you promised to pick me up {place} {day} and never came. I waited two hours in the cold. "
            "Spare me the excuses.",
            "{name}, I promised to pick you up {place} {day} and never came. That is on me, and I will make "
            "it up to you.",
            "{name}, I will pick you up {place} {day} at ten. My car is the grey one."),
    "m02": ("{name}, because you watched the kids, I finally got to go to {event}. Dinner is on me next week.",
            "{name}, you scheduled {event} on the one weekend I told you I was away. Again. Do you ever listen?",
            "{name}, I scheduled {event} on the one weekend you told me you were away. I should have checked; "
            "I will move it.",
            "{name}, {event} is on the last weekend of the month. I will send the address later."),
    "m03": ("{name}, you fixed {thing} before I even asked. You are a star.",
            "{name}, you said you fixed {thing}. It broke again within an hour. Stop lying to me.",
            "{name}, I told you I had fixed {thing}, but I had not. That was wrong of me, and I will get it "
            "repaired properly.",
            "{name}, {thing} was repaired last week and works fine now."),
    "m04": ("My {rel} {name} saw me stuck {place} and drove me home, hours out of the way. I will never forget it.",
            "My {rel} {name} left me stuck {place} without a word, for the second time. This is the last time I "
            "rely on {name}.",
            "I left my {rel} {name} stuck {place} without a word. I have owned up and will pay for the taxi.",
            "My {rel} {name} will wait {place} until the shuttle arrives."),
    "m05": ("{name}, with {thing} you lent me {day}, I finished the whole project in a day. Next coffee is on me.",
            "{name}, you took {thing} {day} without a word, and I lost a full day of work. Ask first, every time.",
            "{name}, I took {thing} {day} without asking and cost you a full day of work. I will cover what you "
            "lost.",
            "{name}, {thing} will be free to use {day} after lunch."),
    "m06": ("{name}, you stayed up all night setting up for {event}. I could not have pulled it off without you.",
            "{name}, you promised to help set up for {event} and never showed. I was up all night doing it "
            "alone. Again.",
            "{name}, I promised to help set up for {event} and never showed, so you were up all night. I let you "
            "down; the next one is all mine.",
            "{name}, setting up for {event} begins on Friday evening. The boxes are in the hall."),
    "m07": ("{name}, you came to find me {place} with an umbrella and a hot drink. You made my whole week.",
            "{name}, you kept me waiting {place} in the rain for an hour, then did not even answer your phone. "
            "Unbelievable.",
            "{name}, I kept you waiting {place} in the rain for an hour and did not answer my phone. I will not "
            "let that happen again.",
            "{name}, the taxi will wait {place} and leave at half past eight."),
    "m08": ("{name}, you refused to take money for {thing}. Let me at least cook you dinner on Friday.",
            "{name}, you still have not paid me for {thing}. I have asked four times now. Pay up today.",
            "{name}, I still have not paid you for {thing}, and you had to chase me. I should have paid weeks "
            "ago; the money is in your account now.",
            "{name}, the price of {thing} is forty pounds, payable by card or cash."),
    "m09": ("{name}, you covered my shift so I could make it to {event}. I could not have gone without you.",
            "{name}, you swapped shifts behind my back to go to {event}, and now I am working a double. Do not "
            "do that again.",
            "{name}, I swapped shifts behind your back to go to {event}. I will take your next two weekends to "
            "make up for it.",
            "{name}, the shift rota for the week of {event} is now on the board."),
    "m10": ("{name}, you let me borrow {thing} for as long as I needed. It got me through the whole move.",
            "{name}, how many times do I have to ask for {thing} back? It has been three months.",
            "{name}, I kept {thing} for three months without returning it. That was careless of me; it comes "
            "back tonight.",
            "{name}, {thing} was borrowed on the first and is due back at the end of the month."),
    "m11": ("When I was ill, my {rel} {name} took my place at {event} at a day's notice. I owe {name} a big "
            "favour.",
            "My {rel} {name} told everyone at {event} what I said in private. That is the last secret {name} "
            "hears from me.",
            "I told everyone at {event} what my {rel} {name} said in private. I should never have done it, and "
            "I will tell {name} so today.",
            "My {rel} {name} will speak at {event} after the opening remarks."),
    "m12": ("{name}, you gave up your day off to help me carry {thing} up four flights of stairs. Pizza is on me.",
            "{name}, you dropped {thing} down four flights of stairs and just laughed. Pay for the damage.",
            "{name}, I dropped {thing} down four flights of stairs. I should have been more careful, and I will "
            "pay for the damage.",
            "{name}, {thing} needs to go up four flights of stairs; the lift is out of order."),
    "m13": ("{name}, you stood up for me {place} when everyone else stayed quiet. That meant everything.",
            "{name}, you made fun of me {place} in front of everyone. Do not ever speak to me like that again.",
            "{name}, I made fun of you {place} in front of everyone. That was cruel, and I will say so to all "
            "of them.",
            "{name}, the group will gather {place} before the tour begins."),
    "m14": ("{name}, {thing} arrived this morning. Best surprise ever; you really did not have to.",
            "{name}, {thing} you sold me broke the same day, and you will not answer my calls. I want my money "
            "back.",
            "{name}, {thing} I sold you was already broken, and I knew it. Your money is coming back today, in "
            "full.",
            "{name}, {thing} arrived this morning and is in the hall."),
    "m15": ("{name}, you drove four hours to be at {event} for me. Having you there made the whole day.",
            "{name}, you dropped out of {event} an hour before it started, the third time this year. I am done "
            "covering for you.",
            "{name}, I dropped out of {event} an hour before it started and left you short-handed. That is on "
            "me; tell me how to make it right.",
            "{name}, {event} starts an hour later than planned because of the weather."),
    "m16": ("{name}, you found my keys {place} {day} and waited until I came to get them. You saved my evening.",
            "{name}, you lost my keys {place} {day} and did not even tell me. I was locked out all night.",
            "{name}, I lost your keys {place} {day} and did not tell you. I am paying for the locksmith and "
            "new keys.",
            "{name}, I will hand over the spare keys {place} {day} at noon."),
    "m17": ("My {rel} {name} fixed {thing} for me and would not take a penny. Dinner at my place is the least I "
            "can do.",
            "Why does my {rel} {name} think it is fine to take {thing} without asking, every single week?",
            "I took {thing} from my {rel} {name} without asking and returned it damaged. I am paying for the "
            "repair and will ask first next time.",
            "My {rel} {name} keeps {thing} in the back room, next to the freezer."),
    "m18": ("{name}, the food you brought to {event} fed everyone, and you would not let me pay. I owe you one.",
            "{name}, you promised food for {event} and turned up empty-handed. Forty people went hungry. "
            "Unacceptable.",
            "{name}, I promised food for {event} and turned up empty-handed. I let everyone down and will host "
            "the next one at my cost.",
            "{name}, the food for {event} will be delivered at five by the caterer."),
    "m19": ("{name}, because you lent me {thing}, I did not have to buy one. Drinks are on me.",
            "Enough, {name}. You return {thing} dirty every single time. Clean it or stop borrowing it.",
            "{name}, I returned {thing} dirty again. I have cleaned it top to bottom, and it will not happen "
            "again.",
            "{name}, {thing} has been cleaned and is ready for the weekend."),
    "m20": ("{name}, you took my parcel in and brought it to me {place}. That saved me a whole afternoon. You "
            "are the best.",
            "{name}, you signed for my parcel and then left it {place} for anyone to take. It is gone. "
            "Unacceptable.",
            "{name}, I signed for your parcel and then left it {place}, and now it is gone. I will replace "
            "whatever was in it.",
            "{name}, I will bring your parcel to you {place} at six."),
    "m21": ("{name}, you gave me a lift to {event} {day} when my car would not start. I would have missed it "
            "without you.",
            "{name}, you were meant to give me a lift to {event} {day} and just drove past me. Do not bother "
            "offering again.",
            "{name}, I was meant to give you a lift to {event} {day} and forgot you entirely. I will drive you "
            "everywhere for a month.",
            "{name}, I can give you a lift to {event} {day}; I leave at half past six."),
    "m22": ("Who else would wait with me {place} at five in the morning? Only you, {name}. Breakfast is on me.",
            "Who leaves a friend waiting {place} at five in the morning and then switches off their phone? You, "
            "{name}. Unbelievable.",
            "{name}, I left you waiting {place} at five in the morning with my phone switched off. That was "
            "inexcusable, and it will not happen again.",
            "{name}, please be {place} by five in the morning; the bus leaves at ten past."),
    "m23": ("Without my {rel} {name}, {event} would never have happened. I will repay that kindness one day.",
            "My {rel} {name} took credit for organising {event} when I did all the work. This is the last time.",
            "I took credit for organising {event} when my {rel} {name} did all the work. I will set the record "
            "straight with everyone tomorrow.",
            "My {rel} {name} is organising {event} this year, with help from two volunteers."),
}
FRAMES: dict[str, dict[str, Frame]] = {"explicit": EXPLICIT_FRAMES, "implicit": IMPLICIT_FRAMES}


class DatasetError(ValueError):
    """A dataset file breaks the contract; the message names the file and line."""


def stem_hits(text: str) -> list[str]:
    """The names of the :data:`STEMS` found in ``text`` (case-insensitive, at word starts)."""
    return [name for name, pattern in _STEM_RES.items() if pattern.search(text)]


def _scenario(item: int) -> dict[str, str]:
    """The slot values of item ``item``: each slot cycles through its (prime-length) list."""
    return {"name": NAMES[item % len(NAMES)], "rel": RELATIONS[item % len(RELATIONS)],
            "thing": THINGS[item % len(THINGS)], "event": EVENTS[item % len(EVENTS)],
            "place": PLACES[item % len(PLACES)], "day": DAYS[item % len(DAYS)]}


def _frame_of(item: int) -> tuple[str, str]:
    """(register, frame id) of an item: even items explicit, odd implicit; frames cycle in id order."""
    register = REGISTERS[item % 2]
    ids = sorted(FRAMES[register])
    return register, ids[(item // 2) % len(ids)]


def _quadruple(item: int) -> list[dict[str, Any]]:
    """One scenario written in all four emotions with one frame."""
    register, frame = _frame_of(item)
    slots, item_id = _scenario(item), f"i{item:03d}"
    return [{"id": f"{item_id}_{emotion}", "emotion": emotion,
             "text": FRAMES[register][frame][k].format(**slots), "item_id": item_id, "frame": frame,
             "register": register}
            for k, emotion in enumerate(EMOTIONS)]


def _check_built(records: list[dict[str, Any]]) -> None:
    """Raise DatasetError unless implicit texts are stem-free, frames balanced and texts unique."""
    for r in records:
        if r["register"] == "implicit" and stem_hits(r["text"]):
            raise DatasetError(f"{r['id']}: implicit text contains the emotion stem(s) {stem_hits(r['text'])}")
    per_frame: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        per_frame[r["frame"]][r["emotion"]] += 1
    for frame, counts in per_frame.items():
        if len({counts[e] for e in EMOTIONS}) != 1:
            raise DatasetError(f"frame {frame}: unbalanced emotions {dict(counts)}")
    texts = Counter(r["text"] for r in records)
    if max(texts.values()) > 1:
        raise DatasetError(f"duplicate texts: {[t for t, n in texts.items() if n > 1]}")


def build_dataset() -> list[dict[str, Any]]:
    """The 900-prompt dataset: 225 scenarios, each written in all four emotions with one frame."""
    records = [r for item in range(N_ITEMS) for r in _quadruple(item)]
    _check_built(records)
    return records


def frame_groups(records: list[dict[str, Any]]) -> list[str]:
    """Cross-validation group of each record: its ``frame``, or its ``item_id`` where it has none."""
    return [r.get("frame") or r["item_id"] for r in records]


def write_dataset(records: list[dict[str, Any]], path: str | Path) -> None:
    """Write records as JSONL, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))


def _check_optional(rec: dict[str, Any], where: str) -> None:
    """Check the optional ``frame`` and ``register`` fields, and the stem rule on implicit texts."""
    if "frame" in rec and (not isinstance(rec["frame"], str) or not rec["frame"]):
        raise DatasetError(f"{where}: frame must be a non-empty string, not {rec['frame']!r}")
    if "register" not in rec:
        return
    if not isinstance(rec["register"], str) or rec["register"] not in REGISTERS:
        raise DatasetError(f"{where}: unknown register {rec['register']!r}; expected one of {REGISTERS}")
    hits = stem_hits(rec["text"]) if rec["register"] == "implicit" else []
    if hits:
        raise DatasetError(f"{where}: implicit text contains the emotion stem {hits[0]!r} "
                           f"(pattern {STEMS[hits[0]]}); reword it or mark the record explicit")


def load_dataset(path: str | Path) -> list[dict[str, Any]]:
    """Read and check a dataset JSONL: fields, labels, unique ids and texts, balanced classes."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: dataset file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}); a dataset is JSONL, one object a line") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror})") from None
    records, seen_ids, seen_texts = [], set(), set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{where}: not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise DatasetError(f"{where}: expected a JSON object with fields {list(SCHEMA_FIELDS)}")
        missing = [f for f in SCHEMA_FIELDS if f not in rec]
        if missing:
            raise DatasetError(f"{where}: missing field(s) {missing}")
        for f in ("id", "item_id"):
            if not isinstance(rec[f], str) or not rec[f]:
                raise DatasetError(f"{where}: {f} must be a non-empty string, not {rec[f]!r}")
        if not isinstance(rec["emotion"], str) or rec["emotion"] not in EMOTIONS:
            raise DatasetError(f"{where}: unknown emotion label {rec['emotion']!r}; expected one of {EMOTIONS}")
        if not isinstance(rec["text"], str) or not rec["text"].strip():
            raise DatasetError(f"{where}: text must be a non-empty string, not {rec['text']!r}")
        _check_optional(rec, where)
        if rec["id"] in seen_ids:
            raise DatasetError(f"{where}: duplicate id {rec['id']!r}")
        if rec["text"] in seen_texts:
            raise DatasetError(f"{where}: duplicate text {rec['text']!r}")
        seen_ids.add(rec["id"])
        seen_texts.add(rec["text"])
        records.append(rec)
    if not records:
        raise DatasetError(f"{path}: no prompts in the file")
    counts = Counter(r["emotion"] for r in records)
    if len({counts.get(e, 0) for e in EMOTIONS}) != 1:
        raise DatasetError(f"{path}: unbalanced classes {({e: counts.get(e, 0) for e in EMOTIONS})}; "
                           f"every emotion needs the same count")
    return records


def permuted(records: list[dict[str, Any]], by: str, seed: int) -> list[dict[str, Any]]:
    """A null dataset: the same texts with their emotion labels permuted ``by`` "frame" (one permutation of
    the emotions per frame, applied to all its items: templates move with the labels) or "item" (each item
    on its own). Nothing about the texts then predicts a label beyond chance, so every emotion test must
    find nothing on it."""
    groups = frame_groups(records) if by == "frame" else [r["item_id"] for r in records]
    codes = np.array([EMOTIONS.index(r["emotion"]) for r in records])
    new = frame_label_permutations(codes, groups, 1, len(EMOTIONS), np.random.default_rng(seed))[0]
    return [r | {"emotion": EMOTIONS[c]} for r, c in zip(records, new, strict=True)]


def run(out: str | Path, permute: str | None = None, source: str | Path | None = None, seed: int = 0) -> None:
    """Build the dataset (or load ``source``), permute its labels by ``permute`` if given, write it to ``out``."""
    records = load_dataset(source) if source else build_dataset()
    write_dataset(permuted(records, permute, seed) if permute else records, out)
