//! Judging what a client received of numbered group messages (`<publisher>:<n>`, n = 0, 1, …
//! from each publisher), as cluster tests need it: complete, in order and once, or repeated
//! only as the loss of a worker host allows. Checked as the messages arrive ([`Sequence`]),
//! so a crowd of tens of thousands of clients keeps a few numbers each, not the messages.

use std::collections::BTreeMap;
use std::fmt;

/// The text of publisher `publisher`'s message number `n`.
pub fn message(publisher: &str, n: u32) -> String {
    format!("{publisher}:{n}")
}

/// A numbered message's publisher and number, or `None` for any other text.
pub fn parse(text: &str) -> Option<(&str, u32)> {
    let (publisher, n) = text.split_once(':')?;
    Some((publisher, n.parse().ok()?))
}

/// The repeats a check lets pass: those a lost worker host causes. The gateway sends the
/// events that host had not finished to another, and those it ran but had not yet
/// acknowledged run twice. So at most one run of consecutive numbers, no longer than a
/// publisher's window (a gateway hands a host at most `max_events_in_flight` of one client's
/// events), of numbers from around the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Every repeated number is below this.
    pub below: u32,
    /// The run of repeats is at most this long.
    pub run: usize,
}

impl Allowance {
    /// No repeat at all: what a cluster that lost nothing owes.
    pub const NONE: Self = Self { below: 0, run: 0 };
}

/// Repeats kept per sequence: past any allowance, more would say nothing new.
const REPEATS_KEPT: usize = 1024;

/// What one client received from one publisher so far.
#[derive(Debug, Default, Clone)]
pub struct Sequence {
    /// The number expected next: every one below it arrived.
    next: u32,
    /// Numbers that arrived again, in arrival order (at most [`REPEATS_KEPT`]).
    repeats: Vec<u32>,
    /// More repeats arrived than were kept.
    repeats_overflowed: bool,
    /// A number arrived before one below it.
    skipped: bool,
}

impl Sequence {
    /// Records that message `n` arrived.
    pub fn saw(&mut self, n: u32) {
        match n.cmp(&self.next) {
            std::cmp::Ordering::Equal => self.next += 1,
            std::cmp::Ordering::Less if self.repeats.len() < REPEATS_KEPT => self.repeats.push(n),
            std::cmp::Ordering::Less => self.repeats_overflowed = true,
            std::cmp::Ordering::Greater => self.skipped = true,
        }
    }

    /// Whether the verdict on the first `count` messages is in: all arrived, or one was
    /// skipped, which no later arrival mends.
    pub fn settled(&self, count: u32) -> bool {
        self.next >= count || self.skipped
    }

    /// The verdict on the first `count` messages, repeats judged by `allowance`.
    pub fn verdict(&self, count: u32, allowance: Allowance) -> Verdict {
        let one_run = self.repeats.windows(2).all(|w| w[1] == w[0] + 1);
        let allowed = one_run
            && !self.repeats_overflowed
            && self.repeats.len() <= allowance.run
            && self.repeats.iter().all(|&n| n < allowance.below);
        if self.skipped {
            Verdict::OutOfOrder
        } else if self.next < count {
            Verdict::Missing
        } else if self.repeats.is_empty() {
            Verdict::Once
        } else if allowed {
            Verdict::RepeatedAcrossLoss
        } else {
            Verdict::Repeated
        }
    }
}

/// What a client's messages came to, from best to worst (a client's verdict is the worst of
/// its publishers').
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Every message once, in order.
    Once,
    /// Every message in order, some again as the [`Allowance`] lets pass.
    RepeatedAcrossLoss,
    /// Every message in order, some again beyond the allowance.
    Repeated,
    /// Some never arrived.
    Missing,
    /// One arrived before one that precedes it.
    OutOfOrder,
    /// Something arrived that was not for it: a message of a group it is not in, or an
    /// answer nobody asked for.
    Unexpected,
    /// Its connection ended.
    Cut,
}

impl Verdict {
    /// Every verdict, in order.
    const ALL: [Self; 7] = [
        Self::Once,
        Self::RepeatedAcrossLoss,
        Self::Repeated,
        Self::Missing,
        Self::OutOfOrder,
        Self::Unexpected,
        Self::Cut,
    ];

    /// Its one-character code, so a crowd's verdicts fit one line.
    pub fn code(self) -> char {
        match self {
            Self::Once => '.',
            Self::RepeatedAcrossLoss => 'r',
            Self::Repeated => 'R',
            Self::Missing => 'm',
            Self::OutOfOrder => 'o',
            Self::Unexpected => 'u',
            Self::Cut => 'x',
        }
    }

    /// The verdict whose code is `code`.
    pub fn from_code(code: char) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.code() == code)
    }
}

/// One verdict per client, in the order the clients were opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts(pub Vec<Verdict>);

impl Verdicts {
    /// Whether every client's verdict is one of `allowed`.
    pub fn all_in(&self, allowed: &[Verdict]) -> bool {
        self.0.iter().all(|v| allowed.contains(v))
    }

    /// How many clients had `verdict`.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.0.iter().filter(|&&v| v == verdict).count()
    }

    /// The codes, one per client.
    pub fn codes(&self) -> String {
        self.0.iter().map(|v| v.code()).collect()
    }

    /// Parses [`Verdicts::codes`].
    pub fn from_codes(codes: &str) -> Option<Self> {
        codes
            .chars()
            .map(Verdict::from_code)
            .collect::<Option<_>>()
            .map(Self)
    }
}

/// How many clients had each verdict, and the first few clients of each bad one.
impl fmt::Display for Verdicts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut by: BTreeMap<Verdict, Vec<usize>> = BTreeMap::new();
        for (i, &v) in self.0.iter().enumerate() {
            by.entry(v).or_default().push(i);
        }
        let parts: Vec<String> = by
            .iter()
            .map(|(v, clients)| match v {
                Verdict::Once | Verdict::RepeatedAcrossLoss => format!("{v:?} {}", clients.len()),
                _ => format!(
                    "{v:?} {} (clients {:?}…)",
                    clients.len(),
                    &clients[..clients.len().min(5)]
                ),
            })
            .collect();
        write!(f, "{} clients: {}", self.0.len(), parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::{Allowance, Sequence, Verdict, Verdicts, message, parse};

    fn seen(numbers: &[u32]) -> Sequence {
        let mut s = Sequence::default();
        numbers.iter().for_each(|&n| s.saw(n));
        s
    }

    const AROUND_THE_LOSS: Allowance = Allowance { below: 8, run: 3 };

    #[test]
    fn complete_once_in_order() {
        let s = seen(&[0, 1, 2, 3]);
        assert!(s.settled(4));
        assert_eq!(s.verdict(4, Allowance::NONE), Verdict::Once);
    }

    #[test]
    fn a_missing_message_keeps_it_unsettled() {
        let s = seen(&[0, 1, 2]);
        assert!(!s.settled(4));
        assert_eq!(s.verdict(4, AROUND_THE_LOSS), Verdict::Missing);
    }

    #[test]
    fn a_skip_settles_it_out_of_order() {
        let s = seen(&[0, 2, 1, 3]);
        assert!(s.settled(4));
        assert_eq!(s.verdict(4, AROUND_THE_LOSS), Verdict::OutOfOrder);
    }

    #[test]
    fn repeats_pass_only_as_one_short_run_before_the_bound() {
        let across = seen(&[0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(
            across.verdict(10, AROUND_THE_LOSS),
            Verdict::RepeatedAcrossLoss
        );
        assert_eq!(across.verdict(10, Allowance::NONE), Verdict::Repeated);
        let two_runs = seen(&[0, 1, 2, 3, 1, 2, 4, 2, 5]);
        assert_eq!(two_runs.verdict(6, AROUND_THE_LOSS), Verdict::Repeated);
        let too_long = seen(&[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
        assert_eq!(too_long.verdict(5, AROUND_THE_LOSS), Verdict::Repeated);
        let too_late = seen(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 9]);
        assert_eq!(too_late.verdict(10, AROUND_THE_LOSS), Verdict::Repeated);
    }

    #[test]
    fn messages_and_codes_round_trip() {
        assert_eq!(parse(&message("q3", 17)), Some(("q3", 17)));
        assert_eq!(parse("joined room"), None);
        assert_eq!(parse("a:x"), None);
        let verdicts = Verdicts(vec![Verdict::Once, Verdict::Cut, Verdict::Missing]);
        assert_eq!(
            Verdicts::from_codes(&verdicts.codes()),
            Some(verdicts.clone())
        );
        assert_eq!(verdicts.count(Verdict::Cut), 1);
        assert!(!verdicts.all_in(&[Verdict::Once, Verdict::Cut]));
        assert_eq!(Verdicts::from_codes("._?"), None);
    }
}
