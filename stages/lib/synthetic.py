"""The synthetic corpus: seeded English movie reviews with an exact, known sentiment.

It is the offline default data source of the pipeline (``data.source: synthetic``): it lets the
whole method run anywhere with tiny models, and it adds a *gold reward*. A reward model learned
from these reviews is only a proxy of :func:`gold_score`, so over-optimisation of the proxy can be
measured (proxy reward up, gold score flat or down)::

    from stages.lib.synthetic import generate_splits, gold_score

    train, test = generate_splits(n_train=5000, n_test=1000, seed=0)   # [{"text", "label"}, ...]
    gold_score("The acting is not great.")                             # -1.0

A review has 3 to 8 sentences: plot summary and neutral filler, opinions on aspects (acting,
plot, score, pacing, dialogue, ending, cinematography, characters, ...), invented titles and
people, usually a closing verdict, and sometimes ``<br /><br />`` paragraph breaks (as in IMDB).
``label`` is 1 when the gold score of the text is positive and 0 when it is negative (never 0);
classes are balanced (within one review for odd ``n``). Texts are unique within and across splits.

Gold score rules (:func:`gold_score`; the same rules apply to *any* text, e.g. model output):

1. ``<br />`` tags are ignored; text is lowercased and split into sentences at ``.``, ``!``, ``?``
   and newlines; a sentence is tokenised into words (``isn't`` is one word) and ``,`` ``;`` ``:``.
2. Sentiment phrases (:data:`LEXICON`, longest match first, e.g. ``must see``) score -3..+3:
   "masterpiece" +3, "great" +2, "solid" +1, "predictable" -1, "dull" -2, "unwatchable" -3.
3. Modifiers apply to the *next* sentiment phrase of the same clause and then are used up:
   intensifiers multiply it ("very" x1.5, "extremely" x2, "somewhat" x0.5, see :data:`MODIFIERS`);
   negators ("not", "no", "never", "hardly", "barely", "nobody", "nothing", "cannot", any word
   ending in ``n't`` and the apostrophe-less "dont", "isnt", ...) multiply it by -0.5 (flip and
   dampen: "not great" = -1, "not bad" = +1). Several modifiers multiply together. A clause
   boundary (``,`` ``;`` ``:`` "and", a contrast word, the end of the sentence) discards pending
   modifiers, so a modifier with no phrase after it in its clause has no effect.
4. Contrast inside a sentence: "but", "yet", "however" multiply everything before them by 0.25
   (the clause after dominates); "although"/"though" open a subordinate clause running to the
   next ``,``/``;``/``:`` or the end of the sentence, weighted 0.25 (the other clause dominates).
5. The score of a text is the sum of its sentence scores (a long gushing review outscores one mild
   sentence), rounded to 6 decimals; text without sentiment phrases (empty, garbage) scores 0.0.

Examples: "The acting is great but the plot is awful." = 0.25*2 - 3 = -2.5;
"Although the acting is great, the plot is awful." = -2.5 as well; "The plot is awful, but the
acting is great." = +1.25; "The acting is very great." = +3.

:func:`bag_of_words_score` (plain sum of phrase scores, no modifiers, no contrast) shows where a
bag of words is misled: its sign differs from the gold sign for about 18% of the reviews.
Everything is deterministic: the generators use only private ``random.Random`` instances seeded
with strings derived from ``seed`` (``generate_splits`` uses one stream for train and another for
test, and drops test texts that occur in train), never global state or ``hash()``.
"""

from __future__ import annotations

import random
import re

__all__ = [
    "LEXICON",
    "MODIFIERS",
    "bag_of_words_score",
    "gold_score",
    "generate_reviews",
    "generate_splits",
]

# ---------------------------------------------------------------- lexicon and gold score rules
_ADJ = {  # adjectives the generator uses; all are also in LEXICON
    3: "brilliant superb outstanding extraordinary magnificent breathtaking flawless masterful "
    "unforgettable phenomenal stunning exceptional sublime fantastic terrific",
    2: "great excellent wonderful gripping moving compelling beautiful delightful impressive "
    "engaging charming powerful memorable clever gorgeous thrilling witty heartfelt touching "
    "inventive absorbing haunting elegant stylish lovely vivid convincing nuanced enjoyable "
    "entertaining",
    1: "good solid decent nice pleasant competent watchable likable serviceable respectable "
    "adequate passable",
    -1: "mediocre uneven forgettable bland predictable flat messy clumsy overlong shallow "
    "derivative generic thin sloppy slow stiff underwhelming cheesy confusing muddled "
    "awkward cliched silly bloated",
    -2: "bad poor dull boring weak lifeless wooden tiresome tedious disappointing annoying "
    "pointless sluggish incoherent lazy contrived grating unconvincing dreary plodding lame "
    "clunky",
    -3: "awful terrible horrible dreadful unwatchable abysmal atrocious painful insufferable "
    "appalling unbearable excruciating pathetic laughable embarrassing",
}
_OTHER = {  # nouns, verbs and multi-word phrases (underscores join the words of a phrase)
    3: "masterpiece triumph perfect hilarious adore adored best must_see top_notch one_of_the_best",
    2: "love loved enjoy enjoyed admire admired recommend recommended worth praise gem delight "
    "treat fun funny well_acted well_written watch_it_again",
    1: "fine okay liked appreciate appreciated worth_a_look",
    -1: "too_long over_the_top by_the_numbers",
    -2: "hate hated dislike disliked bored mess chore bore letdown misfire dud skip avoid unfunny "
    "fell_flat falls_flat paper_thin",
    -3: "worst disaster despise despised waste_of_time one_of_the_worst",
}
#: Sentiment phrases (tuples of lowercase words) and their scores in -3..+3.
LEXICON: dict[tuple[str, ...], int] = {
    tuple(w.split("_")): s for src in (_ADJ, _OTHER) for s, ws in src.items() for w in ws.split()
}
#: Intensifiers and downtoners: multipliers for the next sentiment phrase of the clause.
MODIFIERS: dict[str, float] = {
    **dict.fromkeys("very really truly genuinely deeply remarkably".split(), 1.5),
    **dict.fromkeys("extremely incredibly absolutely utterly highly".split(), 2.0),
    "quite": 1.25,
    "fairly": 0.75,
    "rather": 0.75,
    "mostly": 0.75,
    **dict.fromkeys("somewhat slightly mildly".split(), 0.5),
}
_NEGATORS = (
    "not no never hardly barely nobody nothing neither nor cannot "
    "dont didnt doesnt isnt wasnt cant wont arent werent"
).split()  # and any *n't
_NEGATION, _DOMINATED = -0.5, 0.25
_ROLE: dict[str, float | str] = {
    **MODIFIERS,
    **dict.fromkeys(_NEGATORS, _NEGATION),
    **dict.fromkeys(("but", "yet", "however"), "but"),
    **dict.fromkeys(("although", "though"), "though"),
    **dict.fromkeys((",", ";", ":"), "end"),
    "and": "and",
}
_BY_FIRST: dict[str, list[tuple[tuple[str, ...], int]]] = {}
for _p, _s in sorted(LEXICON.items(), key=lambda kv: -len(kv[0])):
    _BY_FIRST.setdefault(_p[0], []).append((_p, _s))
_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_SENT = re.compile(r"[.!?\n]+")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[,;:]")


def _sentences(text: str) -> list[list[str]]:
    text = _BR.sub(" ", text).lower().replace("\u2019", "'")
    return [toks for s in _SENT.split(text) if (toks := _TOKEN.findall(s))]


def _match(toks: list[str], i: int) -> tuple[int, int]:
    """(length, score) of the longest sentiment phrase starting at toks[i]; (0, 0) if none."""
    for phrase, score in _BY_FIRST.get(toks[i], ()):
        if len(phrase) == 1 or tuple(toks[i : i + len(phrase)]) == phrase:
            return len(phrase), score
    return 0, 0


def _sentence_score(toks: list[str]) -> float:
    done = cur = 0.0  # weighted score of closed clauses, raw score of the open clause
    weight = mult = 1.0  # weight of the open clause, pending modifier product
    sub, i = False, 0  # inside an although-clause?
    while i < len(toks):
        t = toks[i]
        role = _ROLE.get(t)
        if role is None:
            length, score = _match(toks, i) if t in _BY_FIRST else (0, 0)
            if length:
                cur, mult, i = cur + mult * score, 1.0, i + length
                continue
            if t.endswith("n't"):
                mult *= _NEGATION
        elif role.__class__ is float:
            mult *= role
        elif role == "but":
            done, cur, weight, sub, mult = (done + weight * cur) * _DOMINATED, 0.0, 1.0, False, 1.0
        elif role == "though":
            done, cur, weight, sub, mult = done + weight * cur, 0.0, _DOMINATED, True, 1.0
        else:  # "," ";" ":" close an although-clause; they and "and" drop pending modifiers
            if sub and role == "end":
                done, cur, weight, sub = done + weight * cur, 0.0, 1.0, False
            mult = 1.0
        i += 1
    return done + weight * cur


def gold_score(text: str) -> float:
    """Exact sentiment of ``text`` by the documented rules (sum over sentences; 0.0 if none)."""
    if not isinstance(text, str) or not text:
        return 0.0
    return round(sum(_sentence_score(toks) for toks in _sentences(text)), 6) + 0.0


def bag_of_words_score(text: str) -> float:
    """Plain sum of the lexicon scores in ``text``, ignoring modifiers, negation and contrast."""
    total = 0
    for toks in _sentences(text) if isinstance(text, str) else ():
        i = 0
        while i < len(toks):
            length, score = _match(toks, i)
            total, i = total + score, i + max(length, 1)
    return float(total)


# ------------------------------------------------------------------------------ generator words
def _words(s: str, sep: str | None = None) -> list[str]:
    return [w.strip() for w in s.split(sep)]


_ADJS = {s: _words(ws) for s, ws in _ADJ.items()}
_ASPECTS = [
    (a.lstrip("+"), a.startswith("+"))
    for a in _words(
        "acting|+performances|cast|lead performance|central performance|plot|story|storyline|"
        "narrative|premise|score|music|soundtrack|sound design|pacing|editing|dialogue|script|"
        "screenplay|writing|ending|finale|final act|climax|third act|opening|cinematography|"
        "camera work|photography|+visuals|lighting|+characters|supporting cast|villain|hero|"
        "direction|+special effects|production design|+costumes|+sets|humor|+jokes|+action scenes|"
        "chemistry between the leads|twist|tone|+themes|world building|romance|+fight scenes|"
        "+songs|voice acting|+flashbacks|+set pieces|atmosphere|+characters' motivations",
        "|",
    )
]
_FIRST = _words(
    "Anna Ben Clara Daniel Elena Frank Grace Henry Iris Jack Kate Leo Maya Nathan "
    "Olivia Paul Quinn Rosa Sam Tara Victor Wendy Adam Bella Carl Diana Ethan Fiona "
    "George Hannah Isaac Julia Kevin Laura Martin Nora Oscar Petra Ray Sofia Tom Uma "
    "Vera Walter Zoe Alice Bruno Chloe David Emma Felix Gina Hugo Ivy Jonas Lena "
    "Marco Nina Omar Ruth Simon Tess Amir Yuki Lars Ingrid Mateo Priya Kofi Sasha"
)
_LAST = _words(
    "Abbott Baker Carver Dalton Ellis Fischer Garner Hale Ingram Jensen Keller Lang "
    "Mercer Novak Osborne Porter Quill Reyes Sutton Turner Vance Walsh Young Zeller "
    "Archer Bishop Crane Doyle Everett Flynn Graves Holt Irving Jordan Kane Lowe "
    "Marsh Nolan Ortiz Pike Rowe Shaw Thorne Underwood Voss Wilder Yates Brandt Cole "
    "Drake Fenn Grant Hayes Kerr Lister Moreau Price Rhodes Stone Webb Tanaka Okafor "
    "Lindqvist Romero Kowalski Haddad Petrov Nakamura"
)
_T_ADJ = _words(
    "Silent Crimson Last Distant Hidden Burning Frozen Endless Quiet Lost Golden "
    "Restless Shattered Northern Paper Iron Glass Velvet Midnight Wandering Fallen "
    "Scarlet Empty Secret Pale Wild Sleeping Forgotten Long Final Copper Silver Bitter "
    "Open Narrow Second Salt Blue Southern Hollow"
)
_T_NOUN = _words(
    "Harbor River Garden Winter Summer Road Mirror Letter Station Island Kingdom "
    "Signal Orchard Lighthouse Frontier Tide Engine Forest Echo Horizon Bridge Shadow "
    "Circle Crown Compass Lantern Storm Valley Tower Voyage Archive Mountain Desert "
    "Canyon Border Ocean Season Promise Silence Stranger Inheritance Machine Witness "
    "Descent Passage Reunion Covenant Empire Cellar Meadow Thread Daughter Hour"
)
_ROLES = _words(
    "detective nurse teacher widow farmer soldier journalist pilot chef thief lawyer "
    "doctor painter musician mechanic sailor architect professor student librarian "
    "boxer dancer priest gambler smuggler scientist photographer miner waitress "
    "fisherman banker courier hacker astronaut diplomat novelist translator firefighter "
    "surgeon shepherd carpenter spy heiress runaway veteran prosecutor ranger clerk "
    "jockey magician"
)
_GOALS = _words(
    "searches for a missing sister|tries to keep the family farm|plans one last robbery|"
    "investigates a string of disappearances|returns home after twenty years|falls for a stranger|"
    "uncovers a conspiracy inside the police|tries to clear a brother's name|hunts a killer|"
    "tries to rebuild a marriage|escapes from prison|trains for a championship fight|"
    "inherits an old hotel|chases a stolen painting|protects a young witness|"
    "takes over a failing restaurant|joins a travelling circus|opens a bookshop|"
    "enters a cooking contest|searches for buried treasure|leads a rebellion|"
    "survives a plane crash|discovers a family secret|runs for mayor|stages a comeback|"
    "adopts a stray dog|builds a rocket in the garage|writes a novel about the war|"
    "tracks down an old friend|guards a remote lighthouse|crosses the desert on foot|"
    "negotiates a fragile peace|defends a client accused of murder|infiltrates a criminal gang|"
    "teaches music to orphans|restores an abandoned theatre|fakes a death|"
    "loses a fortune overnight|looks after a dying father|smuggles refugees across the border",
    "|",
)
_PLACES = _words(
    "a small coastal town|Paris|Tokyo|a mining village|rural Ohio|Victorian London|"
    "a space station|a remote island|the Scottish Highlands|a crowded hospital|Berlin|"
    "a boarding school|the Arctic|a sleepy suburb|Mexico City|a factory town|New York|"
    "a desert outpost|a crumbling mansion|Naples|a border town|Havana|a cruise ship|"
    "a research base in Antarctica|Lisbon|a snowed in hotel|Chicago|Mumbai|a Texas oil town|"
    "the Australian outback|Istanbul|Cairo|a fishing village in Norway|Seoul|Dublin|"
    "a mountain resort|Rome|a submarine|Marseille|Buenos Aires",
    "|",
)
_TIMES = _words(
    "the twenties|the Second World War|the Cold War|a hot summer|a single night|"
    "the near future|the last days of the war|one winter|the gold rush|"
    "the early eighties|a heat wave|a citywide blackout|election week|the holidays|"
    "the sixties|a long strike",
    "|",
)
_GENRES = _words(
    "thriller|drama|comedy|western|romance|mystery|horror film|war film|biopic|"
    "musical|heist film|science fiction film|crime drama|family drama|"
    "coming of age story|road movie|satire|period piece|fantasy adventure|"
    "courtroom drama|sports drama|animated film|spy thriller|ghost story",
    "|",
)
_TOPICS = _words(
    "grief ambition family memory loyalty class faith revenge friendship power guilt "
    "immigration fame addiction betrayal forgiveness loneliness justice greed "
    "identity home war obsession survival marriage childhood money"
)
_FILLER = _words(
    "I saw it {when} with {whom}.|I watched it {when} with {whom}.|"
    "It is based on a {source} by {name}.|The film runs {length}.|"
    "It was shot on location in {place}.|This is the {nth} feature from director {name}.|"
    "The trailer had me expecting a {genre}.|{name} also appears in a small role as a {role}.|"
    "The cast includes {name} and {name}.|It premiered at {fest} {ago}.|"
    "The film is in {lang} with subtitles.|Most of the story unfolds over {span}.|"
    "I went in knowing almost nothing about it.|My {rel} had been talking about it for weeks.|"
    "At its heart the film is about {topic} and {topic}.|"
    "There is a subplot about a {role} and a {role}.|Fans of the {source} will notice some changes.|"
    "The screenplay was written by {name}.|The music was composed by {name}.|"
    "It is the kind of {genre} that studios used to make every year.|"
    "Some viewers will compare it to {title}.|The story is told in flashbacks by an old {role}.|"
    "It has been compared to {title} and {title}.|{name} plays the {role}.",
    "|",
)
_FILL = {
    "when": _words(
        "last weekend|on a rainy Sunday|at a film festival|on a long flight|"
        "at the local cinema|on television|last night|at a midnight screening|"
        "at home|during the holidays|on opening night|twice",
        "|",
    ),
    "whom": _words(
        "my sister|a friend|my parents|my partner|my kids|some coworkers|"
        "my roommate|my grandfather|my brother|my wife|my husband|a colleague",
        "|",
    ),
    "source": _words(
        "novel|short story|stage play|comic book|memoir|newspaper article|"
        "radio drama|graphic novel|true story",
        "|",
    ),
    "length": _words(
        "just under two hours|about ninety minutes|almost three hours|"
        "a little over two hours|barely eighty minutes",
        "|",
    ),
    "nth": _words("first second third fourth fifth latest"),
    "fest": _words("Cannes Sundance Venice Toronto Locarno Telluride"),
    "ago": _words("last spring|two years ago|in the autumn|last year|this summer", "|"),
    "lang": _words(
        "French Spanish Korean Italian German Japanese Danish Portuguese Polish "
        "Hindi Turkish Swedish"
    ),
    "span": _words(
        "a single weekend|three days|one summer|a decade|a single night|several years", "|"
    ),
    "rel": _words("sister brother mother father cousin neighbor uncle aunt"),
}
_VERBS = {
    1: [
        ("loved", "love"),
        ("enjoyed", "enjoy"),
        ("admired", "admire"),
        ("adored", "adore"),
        ("appreciated", "appreciate"),
    ],
    -1: [("hated", "hate"), ("disliked", "dislike"), ("despised", "despise")],
}
_NOUNS = {
    1: ["masterpiece", "triumph", "gem", "delight", "treat"],
    -1: ["mess", "chore", "bore", "letdown", "misfire", "dud", "disaster", "waste of time"],
}
_VERDICTS = {
    1: _words(
        "Highly recommended.|I recommend it.|I would recommend it to anyone.|"
        "Worth watching.|A must see.|I would watch it again.|Worth a look.|"
        "Definitely worth the ticket.|Top notch.|One of the best films this year.|"
        "Do not skip this one.|Not a waste of time.",
        "|",
    ),
    -1: _words(
        "Skip it.|Avoid it.|Not recommended.|I cannot recommend it.|"
        "A waste of time.|Not worth the ticket.|I will never watch it again.|"
        "One of the worst films this year.|Avoid at all costs.|"
        "Do yourself a favor and skip it.|Not worth a look.",
        "|",
    ),
}
_MOD_WORDS = list(MODIFIERS)
_AMPS = [w for w, m in MODIFIERS.items() if m > 1]
_DID_NOT = ("did not", "didn't")


# ------------------------------------------------------------------------------ sentence builders
def _an(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _name(r: random.Random) -> str:
    return f"{r.choice(_FIRST)} {r.choice(_LAST)}"


def _title(r: random.Random) -> str:
    k = r.randrange(4)
    if k == 0:
        return f"The {r.choice(_T_ADJ)} {r.choice(_T_NOUN)}"
    if k == 1:
        return f"{r.choice(_T_NOUN)} of the {r.choice(_T_NOUN)}"
    return f"The {r.choice(_T_NOUN)}" if k == 2 else f"{r.choice(_T_ADJ)} {r.choice(_T_NOUN)}"


def _adj(r: random.Random, sign: int, p_mod: float = 0.3) -> str:
    mag = r.choices((1, 2, 3), (3, 4, 3))[0]
    word = r.choice(_ADJS[sign * mag])
    return f"{r.choice(_AMPS if mag == 3 else _MOD_WORDS)} {word}" if r.random() < p_mod else word


def _aspect(r: random.Random) -> tuple[str, bool]:
    a, plural = r.choice(_ASPECTS)
    return "the " + a, plural


def _clause(r: random.Random, sign: int) -> str:
    """A clause '<aspect> is <adj>' whose gold score has ``sign`` (sometimes via negation)."""
    x, pl = _aspect(r)
    cop = r.choice(("are", "were", "feel", "seem") if pl else ("is", "was", "feels", "seems"))
    if r.random() < 0.15:
        return f"{x} {('are' if pl else 'is')} not {_adj(r, -sign, 0.1)}"
    return f"{x} {cop} {_adj(r, sign)}"


def _plain(r: random.Random, s: int) -> str:
    x, pl = _aspect(r)
    k = r.randrange(9)
    if k == 0:
        return f"{_cap(_clause(r, s))}."
    if k == 1:
        return f"I thought {x} {'were' if pl else 'was'} {_adj(r, s)}."
    if k == 2:
        return f"I found {x} {_adj(r, s)}."
    if k == 3:
        return f"As for {x}, {'they are' if pl else 'it is'} {_adj(r, s)}."
    if k == 4:
        return f"{_name(r)} gives {_an(_adj(r, s))} performance as the {r.choice(_ROLES)}."
    if k == 5:
        past = r.choice(_VERBS[s])[0]
        return f"I {past} {x}." if r.random() < 0.7 else f"I {past} every minute of it."
    if k == 6:
        return f"It is {_an(_adj(r, s))} {r.choice(_GENRES)}."
    if k == 7:
        return (
            f"What {_an(r.choice(_NOUNS[s]))}!"
            if s < 0 or r.random() < 0.5
            else f"{_cap(_clause(r, s))} from start to finish."
        )
    return f"{_cap(x)} {'are' if pl else 'is'} {_adj(r, s, 0.6)} at times."


def _negated(r: random.Random, s: int) -> str:
    x, pl = _aspect(r)
    adj = _adj(r, -s, 0.2)
    k = r.randrange(8)
    if k == 0:
        return f"{_cap(x)} {r.choice(('are', 'were') if pl else ('is', 'was'))} not {adj}."
    if k == 1:
        return f"{_cap(x)} {r.choice(('aren', 'weren') if pl else ('isn', 'wasn'))}'t {adj}."
    if k == 2:
        return f"{_cap(x)} never {'feel' if pl else 'feels'} {adj}."
    if k == 3:
        return f"I would hardly call {x} {adj}."
    if k == 4:
        base = r.choice(_VERBS[-s])[1]
        return f"I {r.choice(_DID_NOT)} {base} {x}."
    if k == 5:
        return f"It is not {_an(adj)} {r.choice(_GENRES)}."
    if k == 6:
        return f"Nobody would call {x} {adj}."
    return f"I cannot say that {x} {'were' if pl else 'was'} {adj}."


def _contrast(r: random.Random, s: int) -> str:
    dom, other = _clause(r, s), _clause(r, -s if r.random() < 0.85 else s)
    k = r.randrange(6)
    if k == 0:
        return f"{_cap(other)}, but {dom}."
    if k == 1:
        return f"{_cap(other)}, yet {dom}."
    if k == 2:
        return f"Although {other}, {dom}."
    if k == 3:
        return f"{_cap(dom)}, though {other}."
    if k == 4:
        return f"{_cap(dom)}, although {other}."
    return f"{_cap(other)}, but overall it is {_an(_adj(r, s))} film."


def _verdict(r: random.Random, s: int, title: str) -> str:
    k = r.randrange(6)
    if k == 0:
        return r.choice(_VERDICTS[s])
    if k == 1:
        return f"Overall, {_an(_adj(r, s))} {r.choice(('film', 'movie', r.choice(_GENRES)))}."
    if k == 2:
        return f"In the end, {title} is {_adj(r, s)}."
    if k == 3:
        return f"All in all, it is {_an(r.choice(_NOUNS[s]))}."
    if k == 4:
        return f"My verdict: {_adj(r, s)}."
    return f"{_cap(_adj(r, s))} from start to finish."


def _plot(r: random.Random, title: str) -> str:
    k = r.randrange(5)
    if k == 0:
        return (
            f"{title} follows {_name(r)}, {_an(r.choice(_ROLES))} who {r.choice(_GOALS)} in "
            f"{r.choice(_PLACES)}."
        )
    if k == 1:
        return (
            f"Set in {r.choice(_PLACES)} during {r.choice(_TIMES)}, {title} tells the story of "
            f"{_an(r.choice(_ROLES))} who {r.choice(_GOALS)}."
        )
    if k == 2:
        return (
            f"Directed by {_name(r)}, {title} is {_an(r.choice(_GENRES))} about "
            f"{r.choice(_TOPICS)} and {r.choice(_TOPICS)}."
        )
    if k == 3:
        return f"{_name(r)} stars as {_an(r.choice(_ROLES))} who {r.choice(_GOALS)}."
    return (
        f"In {title}, {r.choice(_FIRST)} is {_an(r.choice(_ROLES))} who {r.choice(_GOALS)} "
        f"during {r.choice(_TIMES)}."
    )


def _filler(r: random.Random) -> str:
    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key in _FILL:
            return r.choice(_FILL[key])
        return {"name": _name, "title": _title}.get(
            key,
            lambda r: r.choice(
                {"genre": _GENRES, "role": _ROLES, "place": _PLACES, "topic": _TOPICS}[key]
            ),
        )(r)

    return re.sub(r"\{(\w+)\}", sub, r.choice(_FILLER))


# Mix of a review: most are clear-cut, a share are deliberately mixed (small net scores);
# P(opinion agrees with the label) and P(verdict agrees) for clear and mixed reviews.
_P_MIXED, _KINDS, _P_VERDICT = 0.12, (0.55, 0.22, 0.23), 0.9
_P_AGREE, _P_VERDICT_AGREE = {False: 0.92, True: 0.55}, {False: 0.97, True: 0.75}


def _review(r: random.Random, s: int) -> str:
    n = r.randint(3, 8)
    title = _title(r)
    verdict, mixed = r.random() < _P_VERDICT, r.random() < _P_MIXED
    n_neutral = min(n - verdict - 1, r.choice((0, 1, 1, 1, 2, 2, 3)))
    opinions = []
    for _ in range(n - verdict - n_neutral):
        sign = s if r.random() < _P_AGREE[mixed] else -s
        kind = r.choices((_plain, _negated, _contrast), _KINDS)[0]
        opinions.append(kind(r, sign))
    body = opinions
    for j in range(n_neutral):
        sent = _plot(r, title) if j == 0 and r.random() < 0.8 else _filler(r)
        pos = 0 if j == 0 and r.random() < 0.75 else r.randint(0, len(body))
        body.insert(pos, sent)
    if verdict:
        body.append(_verdict(r, s if r.random() < _P_VERDICT_AGREE[mixed] else -s, title))
    if r.random() < 0.35:
        return (
            "".join(b + ("<br /><br />" if r.random() < 0.4 else " ") for b in body[:-1]) + body[-1]
        )
    return " ".join(body)


def _generate(n: int, r: random.Random, exclude: frozenset[str] | set[str]) -> list[dict]:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    labels = [1] * (n - n // 2) + [0] * (n // 2)
    r.shuffle(labels)
    seen, rows = set(), []
    for label in labels:
        for _ in range(1000):
            text = _review(r, 1 if label else -1)
            score = gold_score(text)
            if (score > 0 if label else score < 0) and text not in seen and text not in exclude:
                break
        else:  # pragma: no cover - practically unreachable
            raise RuntimeError("could not generate a review with the requested label")
        seen.add(text)
        rows.append({"text": text, "label": label})
    return rows


def generate_reviews(n: int, seed: int) -> list[dict]:
    """``n`` distinct reviews ``{"text", "label"}`` (balanced labels), deterministic in ``seed``."""
    return _generate(n, random.Random(f"synthetic-reviews:{seed}"), frozenset())


def generate_splits(n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Train and test reviews from two disjoint seeded streams; no text appears in both."""
    train = _generate(n_train, random.Random(f"synthetic-train:{seed}"), frozenset())
    test = _generate(
        n_test, random.Random(f"synthetic-test:{seed}"), frozenset(row["text"] for row in train)
    )
    return train, test
