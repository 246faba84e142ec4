//! Synthetic summarization data: deterministic cricket match reports (`cricket-v1`).
//!
//! This module owns the synthetic task used to train and evaluate the small decoders:
//! news-style cricket match reports (the "article") paired with a short reference summary
//! whose wording is a fixed function of the match facts. It owns
//!
//! * the generator ([`generate`], [`sample`]): sample `i` of a split depends only on
//!   `(split, seed, i)` and is byte-identical on every machine (a hand-written SplitMix64
//!   generator, integer arithmetic only);
//! * split assignment ([`split_of`]): an FNV-1a 64 hash of the article text, bucket
//!   `hash % 10`, `0..=7` train, `8` validation, `9` test; the generator rejects candidates
//!   outside the requested split, so splits never share an article;
//! * key-fact scoring ([`facts_in`]) and the lead baseline ([`lead_sentence`]).
//!
//! Every fact in the reference is copied verbatim from the article (no arithmetic is left
//! to the model), while team, venue and player names come from syllable generators with
//! tens of thousands of values, so a model has to copy them rather than memorize them.
//!
//! Reference wording (the only template):
//! `"{winner} beat {loser} by {margin} at {venue}. The scores were {first innings} and
//! {second innings}. {top performer} top-scored with {runs} off {balls} balls."`

use serde::{Deserialize, Serialize};

/// Version tag of the generator; bump it whenever any output byte could change.
pub const GENERATOR_VERSION: &str = "cricket-v1";

/// Seed used when the caller does not choose one.
pub const DEFAULT_SEED: u64 = 20261129;

/// Text appended to every article to form the prompt; the model continues after it.
const SUMMARY_CUE: &str = "\nSummary:";

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training data (hash buckets 0..=7).
    Train,
    /// Validation data (hash bucket 8).
    Validation,
    /// Test data (hash bucket 9).
    Test,
}

impl Split {
    /// All splits, in the order train, validation, test.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// Parses a split name (`train`, `validation`/`val`/`valid`/`dev`, `test`; any case).
    pub fn parse(s: &str) -> Option<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "validation" | "val" | "valid" | "dev" => Some(Split::Validation),
            "test" => Some(Split::Test),
            _ => None,
        }
    }

    /// The canonical lowercase name (`train`, `validation`, `test`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// Stable per-split constant mixed into the sample seed.
    fn code(self) -> u64 {
        match self {
            Split::Train => 0x7472_6169_6e00_0001,
            Split::Validation => 0x7661_6c69_6400_0002,
            Split::Test => 0x7465_7374_0000_0003,
        }
    }

    /// The split owning hash bucket `bucket` (0..=9).
    fn of_bucket(bucket: u64) -> Split {
        match bucket {
            0..=7 => Split::Train,
            8 => Split::Validation,
            _ => Split::Test,
        }
    }
}

/// The key facts a summary must state, as they appear in the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyFacts {
    /// Winning team, e.g. `"Tarvoni Hawks"`.
    pub winner: String,
    /// Both innings totals in batting order joined by `" and "`, e.g.
    /// `"245/7 and 198 all out"`; it appears verbatim in the reference.
    pub score: String,
    /// Name of the match's top scorer, e.g. `"Ansel Morrow"`.
    pub top_performer: String,
}

/// One example: prompt (article + `"\nSummary:"`), reference summary and its key facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthSample {
    /// `"{split}-{index:06}"`, e.g. `"test-000042"`.
    pub id: String,
    /// The article (one paragraph) followed by exactly `"\nSummary:"`.
    pub prompt: String,
    /// The reference summary, without a leading space.
    pub reference: String,
    /// Key facts stated by the reference.
    pub facts: KeyFacts,
}

/// Which key facts a summary states in the deterministic wording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FactMatch {
    /// `"{winner} beat"` occurs (whole words).
    pub winner: bool,
    /// The score string occurs (whole words).
    pub score: bool,
    /// The top performer's full name occurs (whole words).
    pub top_performer: bool,
}

impl FactMatch {
    /// True when all three facts are present.
    pub fn all(&self) -> bool {
        self.winner && self.score && self.top_performer
    }
}

/// `n` samples of a split; sample `i` depends only on `(split, seed, i)`.
pub fn generate(split: Split, seed: u64, n: usize) -> Vec<SynthSample> {
    (0..n).map(|i| sample(split, seed, i)).collect()
}

/// Sample `index` of `split` for `seed`; identical on every machine and run.
pub fn sample(split: Split, seed: u64, index: usize) -> SynthSample {
    let mut rng = Rng::for_sample(split, seed, index);
    loop {
        let game = Game::draw(&mut rng);
        let article = render_article(&game, &mut rng);
        if split_of_article(&article) == split {
            return SynthSample {
                id: format!("{}-{:06}", split.name(), index),
                prompt: format!("{article}{SUMMARY_CUE}"),
                reference: render_summary(&game),
                facts: game.key_facts(),
            };
        }
    }
}

/// Which split a prompt belongs to: FNV-1a 64 of the article text (the prompt without the
/// trailing `"\nSummary:"`), bucket `hash % 10`; used to guarantee disjoint splits.
pub fn split_of(prompt: &str) -> Split {
    split_of_article(article_of(prompt))
}

/// Checks which key facts `summary` states in the deterministic wording: `"{winner} beat"`,
/// the score string and the top performer's name, each as whole words.
pub fn facts_in(summary: &str, facts: &KeyFacts) -> FactMatch {
    FactMatch {
        winner: contains_words(summary, &format!("{} beat", facts.winner)),
        score: contains_words(summary, &facts.score),
        top_performer: contains_words(summary, &facts.top_performer),
    }
}

/// The lead baseline: the article's first sentence (through its first full stop).
pub fn lead_sentence(prompt: &str) -> String {
    let article = article_of(prompt).trim();
    let bytes = article.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let at_end = i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\n';
        if matches!(b, b'.' | b'!' | b'?') && at_end {
            return article[..=i].to_string();
        }
    }
    article.to_string()
}

// ---------------------------------------------------------------------------------------
// Hashing, randomness and text helpers.
// ---------------------------------------------------------------------------------------

/// The article part of a prompt.
fn article_of(prompt: &str) -> &str {
    prompt.strip_suffix(SUMMARY_CUE).unwrap_or(prompt)
}

fn split_of_article(article: &str) -> Split {
    Split::of_bucket(fnv1a64(article.as_bytes()) % 10)
}

/// FNV-1a, 64-bit: stable forever, unlike std's `DefaultHasher`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The SplitMix64 output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64: tiny, and its byte stream is fixed by this code, not by a crate version.
struct Rng(u64);

impl Rng {
    fn for_sample(split: Split, seed: u64, index: usize) -> Rng {
        Rng(mix64(mix64(mix64(seed) ^ split.code()) ^ index as u64))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform-enough integer in `0..n` (multiply-shift; integer only).
    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Integer in `lo..=hi` (returns `lo` when `hi < lo`).
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1) as usize) as u32
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u32) -> bool {
        self.range(0, 99) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Whether `needle` occurs in `hay` with no letter, digit or `/` on either side.
fn contains_words(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '/');
    hay.match_indices(needle).any(|(at, _)| {
        !glued(hay[..at].chars().next_back()) && !glued(hay[at + needle.len()..].chars().next())
    })
}

/// `1 run`, `47 runs`, `1 wicket`, `6 wickets`.
fn plural(n: u32, unit: &str) -> String {
    if n == 1 {
        format!("{n} {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// `8412` -> `8,412`.
fn thousands(n: u32) -> String {
    if n < 1000 {
        n.to_string()
    } else {
        format!("{},{:03}", n / 1000, n % 1000)
    }
}

/// Fills `{0}`, `{1}`, ... in `template` with `args`.
fn fill(template: &str, args: &[&str]) -> String {
    let mut out = template.to_string();
    for (i, a) in args.iter().enumerate() {
        out = out.replace(&format!("{{{i}}}"), a);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Name generators.
// ---------------------------------------------------------------------------------------

const FIRST_NAMES: [&str; 150] = [
    "Aaron", "Abel", "Adam", "Adrian", "Alan", "Albert", "Alfie", "Alistair", "Amir", "Andre",
    "Angus", "Ansel", "Archie", "Arjun", "Arthur", "Ashok", "Barney", "Ben", "Bilal", "Blake",
    "Brendan", "Callum", "Calvin", "Carl", "Casey", "Cedric", "Charlie", "Chris", "Ciaran",
    "Clive", "Colin", "Conor", "Craig", "Dale", "Damian", "Daniel", "Darren", "Dean", "Declan",
    "Dev", "Dominic", "Duncan", "Dylan", "Eddie", "Elliot", "Emeka", "Eric", "Ethan", "Euan",
    "Faisal", "Felix", "Finn", "Fraser", "Gareth", "Gavin", "George", "Glen", "Graham", "Grant",
    "Hamza", "Harry", "Harvey", "Hassan", "Hugo", "Ian", "Imran", "Isaac", "Ivan", "Jack", "Jake",
    "Jamal", "James", "Jason", "Jay", "Joel", "Jonah", "Jordan", "Josh", "Kabir", "Karl", "Keith",
    "Kevin", "Kieran", "Kofi", "Kyle", "Lachlan", "Lewis", "Liam", "Logan", "Luca", "Luke",
    "Malik", "Marcus", "Mark", "Martin", "Matt", "Max", "Mihir", "Milo", "Mohsin", "Nathan",
    "Neil", "Nick", "Nikhil", "Noah", "Oliver", "Omar", "Oscar", "Owen", "Paddy", "Patrick",
    "Paul", "Pete", "Rahul", "Ravi", "Reece", "Rhys", "Rob", "Rory", "Ross", "Ryan", "Sam",
    "Saqib", "Scott", "Sean", "Seth", "Shane", "Simon", "Stefan", "Steve", "Stuart", "Tariq",
    "Theo", "Tom", "Tony", "Travis", "Tyler", "Usman", "Vikram", "Vince", "Wade", "Warren",
    "Wasim", "Wes", "Will", "Xavier", "Yusuf", "Zac", "Zane", "Zubair",
];

const SURNAME_HEADS: [&str; 42] = [
    "Ash", "Bar", "Bel", "Bram", "Bran", "Brock", "Cal", "Car", "Cor", "Dal", "Dar", "Dun", "Ed",
    "El", "Fair", "Fen", "Gar", "Gil", "Hal", "Har", "Hart", "Kel", "Ken", "Lan", "Lock", "Mar",
    "Mer", "Mor", "Nor", "Pem", "Pen", "Ral", "Ros", "Sel", "Stan", "Tal", "Thorn", "Ul", "War",
    "Wen", "Wil", "Yar",
];

const NAME_MIDS: [&str; 10] = ["", "", "", "a", "e", "i", "o", "en", "er", "in"];

const SURNAME_TAILS: [&str; 30] = [
    "by", "ton", "ford", "well", "ley", "wick", "more", "dale", "combe", "field", "son", "ham",
    "worth", "ridge", "croft", "lock", "mere", "shaw", "ward", "grave", "stone", "brook", "den",
    "low", "ett", "ock", "ings", "all", "yard", "gate",
];

const TOWN_HEADS: [&str; 40] = [
    "Tar", "Quen", "Kel", "Brin", "Ast", "Cald", "Dor", "Ems", "Fal", "Gren", "Hol", "Ing", "Jar",
    "Lem", "Mal", "Nes", "Oak", "Pen", "Rav", "Sax", "Tew", "Ulv", "Ven", "Wex", "Yel", "Zan",
    "Ald", "Bex", "Cran", "Dun", "Elm", "Fox", "Glen", "Hay", "Kirk", "Lud", "Mel", "Nor", "Ock",
    "Pol",
];

const TOWN_TAILS: [&str; 25] = [
    "voni", "by", "marsh", "dle", "ton", "ham", "ford", "wick", "bury", "field", "mouth", "stead",
    "port", "chester", "ley", "wood", "gate", "bridge", "minster", "holm", "thorpe", "haven",
    "combe", "well", "mere",
];

const NICKNAMES: [&str; 40] = [
    "Hawks",
    "Foxes",
    "Rovers",
    "Strikers",
    "Falcons",
    "Bears",
    "Wolves",
    "Knights",
    "Rangers",
    "Lions",
    "Stags",
    "Otters",
    "Herons",
    "Comets",
    "Titans",
    "Pirates",
    "Owls",
    "Badgers",
    "Kestrels",
    "Ravens",
    "Panthers",
    "Vikings",
    "Jets",
    "Hornets",
    "Cobras",
    "Eagles",
    "Dragons",
    "Spartans",
    "Mariners",
    "Pilgrims",
    "Wanderers",
    "Harriers",
    "Saints",
    "Rams",
    "Bulls",
    "Sharks",
    "Swifts",
    "Royals",
    "Warriors",
    "Greyhounds",
];

const GROUNDS: [&str; 8] = [
    "Oval", "Park", "Ground", "Road", "Green", "Meadow", "Fields", "Lane",
];

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn surname(rng: &mut Rng) -> String {
    let head = rng.pick(&SURNAME_HEADS);
    let mid = rng.pick(&NAME_MIDS);
    let tail = rng.pick(&SURNAME_TAILS);
    format!("{head}{mid}{tail}")
}

fn person(rng: &mut Rng) -> String {
    let first = rng.pick(&FIRST_NAMES);
    format!("{first} {}", surname(rng))
}

fn town(rng: &mut Rng) -> String {
    let head = rng.pick(&TOWN_HEADS);
    let mid = rng.pick(&NAME_MIDS);
    let tail = rng.pick(&TOWN_TAILS);
    format!("{head}{mid}{tail}")
}

fn team(rng: &mut Rng) -> String {
    let town = town(rng);
    format!("{town} {}", rng.pick(&NICKNAMES))
}

fn venue(rng: &mut Rng) -> String {
    let town = town(rng);
    format!("{town} {}", rng.pick(&GROUNDS))
}

/// Draws names until one is not in `taken`, then records it.
fn fresh(rng: &mut Rng, taken: &mut Vec<String>, make: fn(&mut Rng) -> String) -> String {
    loop {
        let name = make(rng);
        if !taken.contains(&name) {
            taken.push(name.clone());
            return name;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Match facts.
// ---------------------------------------------------------------------------------------

/// A batter's innings.
struct Batter {
    name: String,
    team: usize,
    runs: u32,
    balls: u32,
}

/// Everything a report can mention. Team 0 batted first.
struct Game {
    teams: [String; 2],
    venue: String,
    date: String,
    runs: [u32; 2],
    wickets: [u32; 2],
    winner: usize,
    margin: String,
    /// Balls left when a chase succeeded (0 otherwise).
    balls_left: u32,
    top: Batter,
    others: Vec<Batter>,
    bowler: String,
    bowler_figures: String,
    captain: String,
    captain_team: usize,
    crowd: u32,
    delay_minutes: u32,
    streak: u32,
    next_opponent: String,
    next_venue: String,
}

impl Game {
    fn draw(rng: &mut Rng) -> Game {
        let mut teams_taken = Vec::new();
        let teams = [
            fresh(rng, &mut teams_taken, team),
            fresh(rng, &mut teams_taken, team),
        ];
        let next_opponent = fresh(rng, &mut teams_taken, team);
        let mut venues = Vec::new();
        let venue = fresh(rng, &mut venues, venue);
        let next_venue = fresh(rng, &mut venues, self::venue);
        let date = format!("{} {}", rng.range(1, 28), rng.pick(&MONTHS));

        let (runs, wickets, winner, margin, balls_left) = draw_innings(rng);
        let mut people = Vec::new();
        let top = draw_top(rng, &mut people, winner, runs[winner]);
        let others = draw_others(rng, &mut people, &top, runs, wickets);
        let loser = 1 - winner;
        // The winners' bowler bowled at the loser's innings.
        let bowler_wickets = rng.range(2, wickets[loser].clamp(2, 6));
        let bowler_figures = format!("{}/{}", bowler_wickets, rng.range(14, 62));
        let bowler = fresh(rng, &mut people, person);
        let captain = fresh(rng, &mut people, person);
        Game {
            teams,
            venue,
            date,
            runs,
            wickets,
            winner,
            margin,
            balls_left,
            top,
            others,
            bowler,
            bowler_figures,
            captain,
            captain_team: rng.below(2),
            crowd: rng.range(900, 24_000),
            delay_minutes: 15 * rng.range(1, 6),
            streak: rng.range(2, 5),
            next_opponent,
            next_venue,
        }
    }

    fn total(&self, team: usize) -> String {
        if self.wickets[team] >= 10 {
            format!("{} all out", self.runs[team])
        } else {
            format!("{}/{}", self.runs[team], self.wickets[team])
        }
    }

    fn winner_name(&self) -> &str {
        &self.teams[self.winner]
    }

    fn loser_name(&self) -> &str {
        &self.teams[1 - self.winner]
    }

    fn key_facts(&self) -> KeyFacts {
        KeyFacts {
            winner: self.winner_name().to_string(),
            score: format!("{} and {}", self.total(0), self.total(1)),
            top_performer: self.top.name.clone(),
        }
    }
}

/// Innings runs and wickets, winner, margin text and balls to spare.
fn draw_innings(rng: &mut Rng) -> ([u32; 2], [u32; 2], usize, String, u32) {
    let r1 = rng.range(130, 330);
    let w1 = if rng.chance(35) { 10 } else { rng.range(3, 9) };
    if rng.chance(50) {
        let m = rng.range(1, (r1 - 70).min(150));
        let w2 = if rng.chance(70) { 10 } else { rng.range(4, 9) };
        ([r1, r1 - m], [w1, w2], 0, plural(m, "run"), 0)
    } else {
        let w2 = rng.range(1, 9);
        let r2 = r1 + rng.range(1, 5);
        (
            [r1, r2],
            [w1, w2],
            1,
            plural(10 - w2, "wicket"),
            rng.range(1, 40),
        )
    }
}

/// The match's top scorer, from the winning side.
fn draw_top(rng: &mut Rng, people: &mut Vec<String>, team: usize, total: u32) -> Batter {
    let runs = rng.range(50, (total * 55 / 100).min(150));
    let strike_rate = rng.range(70, 185);
    let balls = (runs * 100 + strike_rate / 2) / strike_rate;
    let name = fresh(rng, people, person);
    Batter {
        name,
        team,
        runs,
        balls,
    }
}

/// One to three lesser innings, always below the top score, within each side's total and
/// never more batters for a side than its fallen wickets allow.
fn draw_others(
    rng: &mut Rng,
    people: &mut Vec<String>,
    top: &Batter,
    runs: [u32; 2],
    wickets: [u32; 2],
) -> Vec<Batter> {
    let mut budget = runs;
    budget[top.team] -= top.runs;
    let mut batted = [0u32; 2];
    batted[top.team] = 1;
    let count = rng.range(1, 3);
    (0..count)
        .map(|_| {
            let mut team = rng.below(2);
            if batted[team] >= wickets[team] + 2 {
                team = 1 - team;
            }
            batted[team] += 1;
            let cap = (budget[team] / 2).min(top.runs - 5).max(2);
            let runs = rng.range(cap.min(8), cap);
            budget[team] -= runs;
            let strike_rate = rng.range(95, 170);
            let balls = ((runs * 100 + strike_rate / 2) / strike_rate).max(1);
            let name = fresh(rng, people, person);
            Batter {
                name,
                team,
                runs,
                balls,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Rendering.
// ---------------------------------------------------------------------------------------

/// Sentence kinds of a report.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Intro,
    FirstInnings,
    SecondInnings,
    Result,
    Top,
    Others,
    Bowler,
    Quote,
    Weather,
    Record,
    Next,
}

/// Kinds every report contains (the summary copies from all of them).
const MANDATORY: [Kind; 6] = [
    Kind::Intro,
    Kind::FirstInnings,
    Kind::SecondInnings,
    Kind::Result,
    Kind::Top,
    Kind::Others,
];

/// Distractor kinds, of which up to three are added.
const OPTIONAL: [Kind; 5] = [
    Kind::Bowler,
    Kind::Quote,
    Kind::Weather,
    Kind::Record,
    Kind::Next,
];

/// Which kind opens the report, with weights (percent).
const LEAD_WEIGHTS: [(Kind, u32); 6] = [
    (Kind::Intro, 46),
    (Kind::Weather, 2),
    (Kind::Result, 20),
    (Kind::Top, 27),
    (Kind::Quote, 2),
    (Kind::FirstInnings, 3),
];

fn pick_lead(rng: &mut Rng) -> Kind {
    let mut roll = rng.range(0, 99);
    for (kind, weight) in LEAD_WEIGHTS {
        if roll < weight {
            return kind;
        }
        roll -= weight;
    }
    Kind::Intro
}

/// Sentence order: a lead, then the rest shuffled with the innings kept in order and the
/// scene-setting intro, when it is not the lead, usually second. Also returns the unused
/// distractor kinds, used to pad short reports.
fn plan(rng: &mut Rng) -> (Vec<Kind>, Vec<Kind>) {
    let lead = pick_lead(rng);
    let mut kinds = MANDATORY.to_vec();
    let mut extras: Vec<Kind> = OPTIONAL.iter().copied().filter(|k| *k != lead).collect();
    rng.shuffle(&mut extras);
    let target = rng.range(7, 9) as usize;
    if !kinds.contains(&lead) {
        kinds.push(lead);
    }
    while kinds.len() < target {
        kinds.push(extras.pop().expect("enough optional kinds"));
    }
    kinds.retain(|k| *k != lead);
    rng.shuffle(&mut kinds);
    let first = kinds.iter().position(|k| *k == Kind::FirstInnings);
    let second = kinds.iter().position(|k| *k == Kind::SecondInnings);
    if let (Some(f), Some(s)) = (first, second) {
        if s < f {
            kinds.swap(f, s);
        }
    }
    if let Some(i) = kinds.iter().position(|k| *k == Kind::Intro) {
        if rng.chance(60) {
            let intro = kinds.remove(i);
            kinds.insert(0, intro);
        }
    }
    kinds.insert(0, lead);
    (kinds, extras)
}

/// Reports shorter than this many words get extra distractor sentences (up to 9 sentences).
const MIN_ARTICLE_WORDS: usize = 90;
const MAX_SENTENCES: usize = 9;

/// The article: one paragraph of sentences joined by single spaces.
fn render_article(game: &Game, rng: &mut Rng) -> String {
    let (kinds, mut extras) = plan(rng);
    let mut sentences: Vec<String> = kinds
        .into_iter()
        .map(|k| render_sentence(k, game, rng))
        .collect();
    let word_count = |s: &[String]| {
        s.iter()
            .map(|x| x.split_whitespace().count())
            .sum::<usize>()
    };
    while word_count(&sentences) < MIN_ARTICLE_WORDS && sentences.len() < MAX_SENTENCES {
        let Some(kind) = extras.pop() else { break };
        let at = 1 + rng.below(sentences.len());
        sentences.insert(at, render_sentence(kind, game, rng));
    }
    sentences.join(" ")
}

fn render_sentence(kind: Kind, g: &Game, rng: &mut Rng) -> String {
    match kind {
        Kind::Intro => intro(g, rng),
        Kind::FirstInnings => first_innings(g, rng),
        Kind::SecondInnings => second_innings(g, rng),
        Kind::Result => result(g, rng),
        Kind::Top => top_performer(g, rng),
        Kind::Others => others(g, rng),
        Kind::Bowler => bowler(g, rng),
        Kind::Quote => quote(g, rng),
        Kind::Weather => weather(g, rng),
        Kind::Record => record(g, rng),
        Kind::Next => next_fixture(g, rng),
    }
}

fn intro(g: &Game, rng: &mut Rng) -> String {
    const T: [&str; 5] = [
        "{0} hosted {1} at {2} on {3}.",
        "{0} and {1} met at {2} on {3} in the county league.",
        "{0} took on {1} at {2} on {3} in a one-day match.",
        "It was a bright morning at {2} on {3} when {0} faced {1}.",
        "{0} welcomed {1} to {2} on {3} with a play-off place at stake.",
    ];
    let home = rng.below(2);
    fill(
        rng.pick(&T),
        &[&g.teams[home], &g.teams[1 - home], &g.venue, &g.date],
    )
}

fn first_innings(g: &Game, rng: &mut Rng) -> String {
    const T: [&str; 4] = [
        "Batting first, {0} finished on {1} from their allotted overs.",
        "{0} chose to bat on a dry surface and made {1}.",
        "{0} were put in and reached {1} by the end of their innings.",
        "After winning the toss, {0} batted first and closed on {1}.",
    ];
    fill(rng.pick(&T), &[&g.teams[0], &g.total(0)])
}

fn second_innings(g: &Game, rng: &mut Rng) -> String {
    const CHASED: [&str; 4] = [
        "In reply, {0} reached {1} with {2} balls to spare.",
        "{0} chased the target down, finishing on {1} with {2} balls left.",
        "{0} got home on {1} with {2} balls remaining.",
        "Needing {3} to win, {0} reached {1} with {2} balls to spare.",
    ];
    const FELL_SHORT: [&str; 4] = [
        "In reply, {0} could only manage {1} as wickets fell at regular intervals.",
        "{0} fell short on {1} despite a late flurry from the tail.",
        "Needing {3} to win, {0} finished on {1}.",
        "The chase never got going and {0} ended on {1}.",
    ];
    let templates = if g.winner == 1 { &CHASED } else { &FELL_SHORT };
    let args = [
        g.teams[1].as_str(),
        &g.total(1),
        &g.balls_left.to_string(),
        &(g.runs[0] + 1).to_string(),
    ];
    fill(rng.pick(templates), &args)
}

fn result(g: &Game, rng: &mut Rng) -> String {
    const T: [&str; 6] = [
        "{0} beat {2} by {1} at {3}.",
        "{0} won by {1} to keep their title hopes alive.",
        "{0} sealed victory by {1} shortly before the close.",
        "The result was a win by {1} for {0}.",
        "In the end {0} were winners by {1}.",
        "{0} claimed the points with a win by {1} over {2}.",
    ];
    fill(
        rng.pick(&T),
        &[g.winner_name(), &g.margin, g.loser_name(), &g.venue],
    )
}

fn top_performer(g: &Game, rng: &mut Rng) -> String {
    const T: [&str; 5] = [
        "{0} top-scored with {1} off {2} balls, including several big sixes.",
        "{0} led the way for {3} with {1} from {2} balls.",
        "The star was {0}, whose {1} came from {2} balls.",
        "{0} top-scored for {3}, hitting {1} off {2} balls.",
        "The standout innings came from {0}, who made {1} off {2} balls.",
    ];
    let t = &g.top;
    let args = [
        t.name.as_str(),
        &t.runs.to_string(),
        &t.balls.to_string(),
        &g.teams[t.team],
    ];
    fill(rng.pick(&T), &args)
}

/// Phrasings for lesser innings; never the top performer's "standout" verbs.
const OTHER_TEMPLATES: [&str; 5] = [
    "{0} chipped in with {1}",
    "{0} added {1} for {3}",
    "{0} made a brisk {1} off {2} balls",
    "{0} contributed {1} for {3}",
    "{0} scored a patient {1}",
];

fn other_clause(template: &str, b: &Batter, g: &Game) -> String {
    let args = [
        b.name.as_str(),
        &b.runs.to_string(),
        &b.balls.to_string(),
        &g.teams[b.team],
    ];
    fill(template, &args)
}

/// Lesser innings in one sentence, each with a different phrasing.
fn others(g: &Game, rng: &mut Rng) -> String {
    let mut templates = OTHER_TEMPLATES;
    rng.shuffle(&mut templates);
    let clauses: Vec<String> = g
        .others
        .iter()
        .zip(templates)
        .map(|(b, t)| other_clause(t, b, g))
        .collect();
    match clauses.as_slice() {
        [a] => format!("{a}."),
        [a, b] => format!("{a} and {b}."),
        [a, b, c] => format!("{a}, {b} and {c}."),
        _ => String::new(),
    }
}

fn bowler(g: &Game, rng: &mut Rng) -> String {
    const T: [&str; 4] = [
        "{0} took {1} for {2} with some tight spells.",
        "{0} claimed {1} with the ball on a slow pitch.",
        "With the ball, {0} returned figures of {1}.",
        "{0} was the pick of the bowlers with {1}.",
    ];
    fill(
        rng.pick(&T),
        &[&g.bowler, &g.bowler_figures, g.winner_name()],
    )
}

fn quote(g: &Game, rng: &mut Rng) -> String {
    const WON: [&str; 5] = [
        "We stuck to our plans",
        "The lads were brilliant today",
        "That was our best performance of the season",
        "We knew the pitch would slow down later on",
        "It was a proper team effort",
    ];
    const LOST: [&str; 5] = [
        "We were a bit short with the bat",
        "We let them off the hook in the field",
        "Credit to them, they played really well",
        "We need to learn from this quickly",
        "The toss made a big difference today",
    ];
    const T: [&str; 3] = [
        "\"{0},\" said {1} captain {2}.",
        "\"{0},\" {1} captain {2} said afterwards.",
        "\"{0},\" admitted {2}, the {1} captain.",
    ];
    let line = if g.captain_team == g.winner {
        rng.pick(&WON)
    } else {
        rng.pick(&LOST)
    };
    fill(rng.pick(&T), &[line, &g.teams[g.captain_team], &g.captain])
}

fn weather(g: &Game, rng: &mut Rng) -> String {
    const T: [&str; 5] = [
        "A crowd of {0} watched in warm sunshine as the bars did a brisk trade.",
        "Rain delayed the start by {1} minutes, but the skies cleared by lunch.",
        "The pitch offered early help to the seamers under grey skies.",
        "A crowd of {0} packed into the ground despite the cold wind.",
        "Overnight rain left the outfield slow and the start was pushed back {1} minutes.",
    ];
    fill(
        rng.pick(&T),
        &[&thousands(g.crowd), &g.delay_minutes.to_string()],
    )
}

fn record(g: &Game, rng: &mut Rng) -> String {
    const ORDINALS: [&str; 7] = [
        "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
    ];
    const T: [&str; 4] = [
        "It was the {2} win of the season for {0}.",
        "{1} have now lost {3} matches in a row and sit near the bottom of the table.",
        "The result lifts {0} to {2} place in the table.",
        "{0} have won {3} of their last six games.",
    ];
    let args = [
        g.winner_name(),
        g.loser_name(),
        rng.pick(&ORDINALS),
        &g.streak.to_string(),
    ];
    fill(rng.pick(&T), &args)
}

fn next_fixture(g: &Game, rng: &mut Rng) -> String {
    const T: [&str; 4] = [
        "{0} face {2} at {3} next week in another key fixture.",
        "{1} travel to {3} to play {2} next Saturday.",
        "Next up for {0} is a trip to {3} to meet {2}.",
        "{1} host {2} at {3} in their next game.",
    ];
    let args = [
        g.winner_name(),
        g.loser_name(),
        &g.next_opponent,
        &g.next_venue,
    ];
    fill(rng.pick(&T), &args)
}

/// The reference summary: a fixed template over the facts, every piece copied from the article.
fn render_summary(g: &Game) -> String {
    format!(
        "{} beat {} by {} at {}. The scores were {} and {}. {} top-scored with {} off {} balls.",
        g.winner_name(),
        g.loser_name(),
        g.margin,
        g.venue,
        g.total(0),
        g.total(1),
        g.top.name,
        g.top.runs,
        g.top.balls,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// FNV-1a 64 of the JSON of train samples 0..50 for DEFAULT_SEED (`cricket-v1`).
    const PINNED: u64 = 0x0b69_8bce_1bdf_b015;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_ascii_alphanumeric())
                    .to_ascii_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    }

    /// ROUGE-L F1 on lowercase words (rough).
    fn rouge_l(candidate: &str, reference: &str) -> f64 {
        let (c, r) = (words(candidate), words(reference));
        if c.is_empty() || r.is_empty() {
            return 0.0;
        }
        let mut dp = vec![vec![0usize; r.len() + 1]; c.len() + 1];
        for i in 0..c.len() {
            for j in 0..r.len() {
                dp[i + 1][j + 1] = if c[i] == r[j] {
                    dp[i][j] + 1
                } else {
                    dp[i][j + 1].max(dp[i + 1][j])
                };
            }
        }
        let lcs = dp[c.len()][r.len()] as f64;
        if lcs == 0.0 {
            return 0.0;
        }
        let (p, rec) = (lcs / c.len() as f64, lcs / r.len() as f64);
        2.0 * p * rec / (p + rec)
    }

    #[test]
    fn same_seed_is_byte_identical_and_other_seed_differs() {
        let a = serde_json::to_string(&generate(Split::Train, DEFAULT_SEED, 200)).unwrap();
        let b = serde_json::to_string(&generate(Split::Train, DEFAULT_SEED, 200)).unwrap();
        assert_eq!(a, b);
        let c = serde_json::to_string(&generate(Split::Train, DEFAULT_SEED + 1, 200)).unwrap();
        assert_ne!(a, c);
        // Sample i does not depend on n.
        assert_eq!(sample(Split::Test, 7, 13), generate(Split::Test, 7, 20)[13]);
    }

    #[test]
    fn known_values_are_stable() {
        // FNV-1a 64 reference vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // SplitMix64 from state 0 (reference output of the published algorithm).
        assert_eq!(Rng(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn output_bytes_are_pinned() {
        // If this fails, generated bytes changed: bump GENERATOR_VERSION and update the hash.
        let json = serde_json::to_string(&generate(Split::Train, DEFAULT_SEED, 50)).unwrap();
        println!("pinned hash {:#018x}", fnv1a64(json.as_bytes()));
        assert_eq!(fnv1a64(json.as_bytes()), PINNED);
    }

    #[test]
    fn splits_are_disjoint_and_match_split_of() {
        let mut seen: std::collections::HashMap<String, Split> = Default::default();
        for (split, n) in [
            (Split::Train, 3000),
            (Split::Validation, 500),
            (Split::Test, 500),
        ] {
            for s in generate(split, DEFAULT_SEED, n) {
                assert_eq!(split_of(&s.prompt), split, "{}", s.id);
                if let Some(other) = seen.insert(s.prompt.clone(), split) {
                    assert_eq!(other, split, "prompt shared by {other:?} and {split:?}");
                }
            }
        }
        assert!(
            seen.len() > 3900,
            "too many duplicate prompts: {}",
            seen.len()
        );
    }

    #[test]
    fn names_are_diverse_and_facts_copyable() {
        let samples = generate(Split::Train, DEFAULT_SEED, 2000);
        let tops: HashSet<_> = samples.iter().map(|s| &s.facts.top_performer).collect();
        let winners: HashSet<_> = samples.iter().map(|s| &s.facts.winner).collect();
        assert!(tops.len() >= 1800, "distinct top performers {}", tops.len());
        assert!(
            winners.len() >= 1500,
            "distinct winning teams {}",
            winners.len()
        );
        for s in &samples {
            let article = article_of(&s.prompt);
            let (first, second) = s.facts.score.split_once(" and ").unwrap();
            for fact in [&s.facts.winner, first, second, &s.facts.top_performer] {
                assert!(
                    contains_words(article, fact),
                    "{}: {fact:?} not in article",
                    s.id
                );
            }
        }
    }

    #[test]
    fn format_and_ascii() {
        for s in generate(Split::Validation, 3, 300) {
            assert!(s.prompt.is_ascii() && s.reference.is_ascii());
            assert!(s.prompt.ends_with("\nSummary:"));
            assert_eq!(s.prompt.matches('\n').count(), 1);
            assert!(!s.reference.starts_with(' '));
            assert!(s.id.starts_with("validation-"));
            let n = words(article_of(&s.prompt)).len();
            assert!((70..=170).contains(&n), "{}: {n} words", s.id);
        }
        assert_eq!(sample(Split::Test, 1, 42).id, "test-000042");
        for split in Split::ALL {
            assert_eq!(Split::parse(split.name()), Some(split));
        }
        assert_eq!(Split::parse("nope"), None);
    }

    #[test]
    fn facts_in_reference_and_lead() {
        let samples = generate(Split::Test, DEFAULT_SEED, 500);
        let mut lead_all = 0;
        for s in &samples {
            assert!(facts_in(&s.reference, &s.facts).all(), "{}", s.id);
            if facts_in(&lead_sentence(&s.prompt), &s.facts).all() {
                lead_all += 1;
            }
        }
        assert!(
            lead_all < samples.len() / 4,
            "lead has all facts in {lead_all}"
        );
        let f = &samples[0].facts;
        let wrong = format!("Someone beat {} by 3 runs.", f.winner);
        assert!(!facts_in(&wrong, f).winner);
        assert!(!facts_in(&format!("{}x top-scored", f.top_performer), f).top_performer);
    }

    #[test]
    fn lead_sentence_stops_at_first_full_stop() {
        let p = "A crowd of 1,200 watched. Foo won by 3 runs.\nSummary:";
        assert_eq!(lead_sentence(p), "A crowd of 1,200 watched.");
        let q = "\"We stuck to our plans,\" said X captain Y. Next.\nSummary:";
        assert_eq!(
            lead_sentence(q),
            "\"We stuck to our plans,\" said X captain Y."
        );
    }

    #[test]
    fn print_examples_and_lengths() {
        let samples = generate(Split::Train, DEFAULT_SEED, 2000);
        for s in samples.iter().take(2) {
            println!(
                "--- {}\n{}\nREFERENCE: {}\nFACTS: {:?}\n",
                s.id, s.prompt, s.reference, s.facts
            );
        }
        let n = samples.len() as f64;
        let mean =
            |f: &dyn Fn(&SynthSample) -> usize| samples.iter().map(f).sum::<usize>() as f64 / n;
        let prompt_words = mean(&|s| s.prompt.split_whitespace().count());
        let ref_words = mean(&|s| s.reference.split_whitespace().count());
        let lead_rouge = samples
            .iter()
            .map(|s| rouge_l(&lead_sentence(&s.prompt), &s.reference))
            .sum::<f64>()
            / n;
        let max_prompt = samples
            .iter()
            .map(|s| s.prompt.split_whitespace().count())
            .max()
            .unwrap();
        let min_prompt = samples
            .iter()
            .map(|s| s.prompt.split_whitespace().count())
            .min()
            .unwrap();
        println!("mean prompt words {prompt_words:.1} (min {min_prompt}, max {max_prompt}), mean reference words {ref_words:.1}, lead ROUGE-L {lead_rouge:.3}");
        assert!((85.0..=145.0).contains(&prompt_words));
        assert!((20.0..=35.0).contains(&ref_words));
        assert!(
            (0.2..=0.5).contains(&lead_rouge),
            "lead ROUGE-L {lead_rouge}"
        );
    }
}
