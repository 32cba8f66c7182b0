//! Per-message pricing (docs/rules.md §6) as data: effective-dated rate cards priced in integer
//! micro-units, the free rules, the recipient's market, and the partner's markup. The same
//! function quotes a message and prices its charge.

use std::collections::BTreeMap;

use crate::time::{Timestamp, days_from_civil};

/// Money in micro-units of a currency (1 EUR = 1,000,000). Never a float.
pub type Micros = i64;

/// A pricing category. Data, not an enum: a rate card prices the ones it lists.
pub type CategoryName = String;

pub const SERVICE: &str = "SERVICE";
pub const MARKETING: &str = "MARKETING";
pub const UTILITY: &str = "UTILITY";
pub const AUTHENTICATION: &str = "AUTHENTICATION";

/// Pricing regions by country calling code; `OTHER` when no prefix matches.
pub const MARKETS: [(&str, &str); 6] = [
    ("39", "IT"),
    ("55", "BR"),
    ("91", "IN"),
    ("1", "NA"),
    ("49", "DE"),
    ("44", "GB"),
];
pub const OTHER_MARKET: &str = "OTHER";

/// The market of an E.164 number (digits, optional `+`): the longest matching calling-code
/// prefix.
pub fn market_of(wa_id: &str) -> &'static str {
    let digits = wa_id.trim_start_matches('+');
    MARKETS
        .iter()
        .filter(|(prefix, _)| digits.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(OTHER_MARKET, |(_, market)| market)
}

/// One version of the prices, in force from `effective_from` until the next card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateCard {
    pub version: String,
    pub effective_from: Timestamp,
    pub currency: String,
    /// (category, market) → provider cost per delivered message.
    pub prices: BTreeMap<(CategoryName, String), Micros>,
    /// Utility templates are free inside an open customer-service window.
    pub utility_free_in_csw: bool,
    /// Everything is free inside a free entry point.
    pub free_in_fep: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PricingError {
    #[error("no rate card is in force at {0}")]
    NoCard(Timestamp),
    #[error("rate card {version} has no price for {category} in {market}")]
    NoPrice {
        version: String,
        category: String,
        market: String,
    },
    #[error("rate card {0} starts no later than the newest card: cards are append-only")]
    NotAppendOnly(String),
    #[error("a price is 0..={} micro-units", crate::wallet::MAX_AMOUNT_MICROS)]
    PriceOutOfRange,
}

/// The cards, oldest first. Append-only: a new card never reprices the past.
#[derive(Clone, Debug, Default)]
pub struct RateBook {
    cards: Vec<RateCard>,
}

impl RateBook {
    pub fn new(cards: Vec<RateCard>) -> Result<Self, PricingError> {
        let mut book = Self::default();
        let mut cards = cards;
        cards.sort_by_key(|c| c.effective_from);
        for c in cards {
            book.append(c)?;
        }
        Ok(book)
    }

    /// Adds a card that starts after every existing one.
    pub fn append(&mut self, card: RateCard) -> Result<(), PricingError> {
        if self
            .cards
            .last()
            .is_some_and(|last| card.effective_from <= last.effective_from)
        {
            return Err(PricingError::NotAppendOnly(card.version));
        }
        if card
            .prices
            .values()
            .any(|p| !crate::wallet::is_acceptable_amount(*p))
        {
            return Err(PricingError::PriceOutOfRange);
        }
        self.cards.push(card);
        Ok(())
    }

    /// The card in force at `at`: the newest with `effective_from <= at`.
    pub fn card_at(&self, at: Timestamp) -> Result<&RateCard, PricingError> {
        self.cards
            .iter()
            .rev()
            .find(|c| c.effective_from <= at)
            .ok_or(PricingError::NoCard(at))
    }
}

/// What is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Text, media, interactive, location, reaction: only inside an open window.
    FreeForm,
    /// An approved template of this pricing category.
    Template { category: CategoryName },
}

/// The partner's markup on the provider cost, per category (or for all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Markup {
    None,
    /// Basis points of the cost (250 = 2.5 %), rounded half up to a micro-unit.
    BasisPoints(u32),
    /// A fixed amount per charged message.
    Fixed(Micros),
}

impl Markup {
    pub fn apply(&self, cost: Micros) -> Micros {
        match self {
            Markup::None => cost,
            Markup::BasisPoints(bp) => cost + (cost * i64::from(*bp) + 5_000) / 10_000,
            Markup::Fixed(amount) => cost + amount,
        }
    }
}

impl std::fmt::Display for Markup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Markup::None => f.write_str("none"),
            Markup::BasisPoints(bp) => write!(f, "{bp}bp"),
            Markup::Fixed(m) => write!(f, "{m}µ fixed"),
        }
    }
}

/// A partner's markups: one per category where set, else the default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkupPlan {
    pub default: Markup,
    pub per_category: BTreeMap<CategoryName, Markup>,
}

impl Default for MarkupPlan {
    fn default() -> Self {
        Self::flat(Markup::None)
    }
}

impl MarkupPlan {
    /// The same markup on every category.
    pub fn flat(markup: Markup) -> Self {
        Self {
            default: markup,
            per_category: BTreeMap::new(),
        }
    }

    pub fn for_category(&self, category: &str) -> &Markup {
        self.per_category
            .get(&category.to_ascii_uppercase())
            .unwrap_or(&self.default)
    }
}

/// Why a message costs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeBecause {
    /// A free-form (service) message inside the window.
    Service,
    /// A utility template inside an open customer-service window.
    UtilityInWindow,
    /// Inside a free entry point.
    FreeEntryPoint,
}

/// The window as of the message's acceptance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowAt {
    pub csw_open: bool,
    pub fep_open: bool,
}

/// A price and everything it was made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub card_version: String,
    pub currency: String,
    pub category: CategoryName,
    pub market: &'static str,
    /// What the provider charges.
    pub cost: Micros,
    /// What the tenant pays (cost + markup).
    pub price: Micros,
    pub free: Option<FreeBecause>,
    /// The markup that made `price` from `cost` (None on a free message).
    pub markup: Markup,
}

impl FreeBecause {
    /// The machine-readable reason (proto `Quote.free_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            FreeBecause::Service => "SERVICE",
            FreeBecause::UtilityInWindow => "UTILITY_IN_WINDOW",
            FreeBecause::FreeEntryPoint => "FREE_ENTRY_POINT",
        }
    }
}

/// Prices one message accepted at `accepted_at` for `recipient` (wa_id). Used by the quote and
/// by the charge alike.
pub fn price(
    book: &RateBook,
    accepted_at: Timestamp,
    recipient: &str,
    kind: &MessageKind,
    window: WindowAt,
    markups: &MarkupPlan,
) -> Result<Quote, PricingError> {
    let card = book.card_at(accepted_at)?;
    let market = market_of(recipient);
    let category = match kind {
        MessageKind::FreeForm => SERVICE.to_owned(),
        MessageKind::Template { category } => category.to_ascii_uppercase(),
    };
    let free = if card.free_in_fep && window.fep_open {
        Some(FreeBecause::FreeEntryPoint)
    } else if *kind == MessageKind::FreeForm {
        Some(FreeBecause::Service)
    } else if category == UTILITY && card.utility_free_in_csw && window.csw_open {
        Some(FreeBecause::UtilityInWindow)
    } else {
        None
    };
    let quote = |cost, price, markup: &Markup| Quote {
        card_version: card.version.clone(),
        currency: card.currency.clone(),
        category: category.clone(),
        market,
        cost,
        price,
        free,
        markup: markup.clone(),
    };
    if free.is_some() {
        return Ok(quote(0, 0, &Markup::None));
    }
    let cost = *card
        .prices
        .get(&(category.clone(), market.to_owned()))
        .or_else(|| {
            card.prices
                .get(&(category.clone(), OTHER_MARKET.to_owned()))
        })
        .ok_or_else(|| PricingError::NoPrice {
            version: card.version.clone(),
            category: category.clone(),
            market: market.to_owned(),
        })?;
    let markup = markups.for_category(&category);
    Ok(quote(cost, markup.apply(cost), markup))
}

/// The card shipped with Finestra (`crates/domain/rates/`).
pub const DEFAULT_CARD: &str = include_str!("../rates/2025-07-01.card");

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("rate card line {line}: {reason}")]
pub struct CardSyntaxError {
    pub line: usize,
    pub reason: String,
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC only, as rate cards are written).
fn parse_utc(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    Some(Timestamp::from_secs(
        days_from_civil(y, mo, d) * 86_400 + h * 3_600 + mi * 60 + se,
    ))
}

/// Parses a rate card file: `key = value` headers, then `CATEGORY, MARKET, micros` lines;
/// `#` starts a comment.
pub fn parse_card(text: &str) -> Result<RateCard, CardSyntaxError> {
    let mut card = RateCard {
        version: String::new(),
        effective_from: Timestamp::default(),
        currency: String::new(),
        prices: BTreeMap::new(),
        utility_free_in_csw: true,
        free_in_fep: true,
    };
    let mut has_from = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |reason: &str| CardSyntaxError {
            line: line_no,
            reason: reason.to_owned(),
        };
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim();
            let flag = || match value {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(err("expected true or false")),
            };
            match key.trim() {
                "version" => card.version = value.to_owned(),
                "currency" => card.currency = value.to_owned(),
                "effective_from" => {
                    card.effective_from =
                        parse_utc(value).ok_or_else(|| err("expected YYYY-MM-DDTHH:MM:SSZ"))?;
                    has_from = true;
                }
                "utility_free_in_csw" => card.utility_free_in_csw = flag()?,
                "free_in_fep" => card.free_in_fep = flag()?,
                other => return Err(err(&format!("unknown setting {other:?}"))),
            }
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [category, market, micros] = fields.as_slice() else {
            return Err(err("expected CATEGORY, MARKET, micros"));
        };
        let micros: Micros = micros
            .parse()
            .map_err(|_| err("the price must be integer micro-units"))?;
        if !crate::wallet::is_acceptable_amount(micros) {
            return Err(err(&format!(
                "a price is 0..={} micro-units",
                crate::wallet::MAX_AMOUNT_MICROS
            )));
        }
        let key = (category.to_ascii_uppercase(), market.to_ascii_uppercase());
        if card.prices.insert(key, micros).is_some() {
            return Err(err("this category and market are priced twice"));
        }
    }
    let missing = |what: &str| CardSyntaxError {
        line: 0,
        reason: format!("{what} is missing"),
    };
    if card.version.is_empty() {
        return Err(missing("version"));
    }
    if card.currency.is_empty() {
        return Err(missing("currency"));
    }
    if !has_from {
        return Err(missing("effective_from"));
    }
    Ok(card)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_secs(1_764_000_000);

    fn card(version: &str, from: Timestamp, marketing_it: Micros) -> RateCard {
        let mut prices = BTreeMap::new();
        for (category, base) in [
            (MARKETING, marketing_it),
            (UTILITY, 20_000),
            (AUTHENTICATION, 30_000),
        ] {
            for (i, market) in ["IT", "BR", "IN", "NA", "DE", "GB", OTHER_MARKET]
                .iter()
                .enumerate()
            {
                prices.insert(
                    (category.to_owned(), (*market).to_owned()),
                    base + i as i64 * 1_000,
                );
            }
        }
        RateCard {
            version: version.into(),
            effective_from: from,
            currency: "EUR".into(),
            prices,
            utility_free_in_csw: true,
            free_in_fep: true,
        }
    }

    fn book() -> RateBook {
        RateBook::new(vec![
            card("2025-07", T0, 60_000),
            card("2026-01", T0.plus_hours(24), 70_000),
        ])
        .expect("valid book")
    }

    fn template(c: &str) -> MessageKind {
        MessageKind::Template { category: c.into() }
    }

    const OPEN: WindowAt = WindowAt {
        csw_open: true,
        fep_open: false,
    };
    const CLOSED: WindowAt = WindowAt {
        csw_open: false,
        fep_open: false,
    };
    const FEP: WindowAt = WindowAt {
        csw_open: false,
        fep_open: true,
    };

    #[test]
    fn markets_by_longest_calling_code_prefix() {
        assert_eq!(market_of("393471234567"), "IT");
        assert_eq!(market_of("+5511988880000"), "BR");
        assert_eq!(market_of("919800000001"), "IN");
        assert_eq!(market_of("14155550100"), "NA");
        assert_eq!(market_of("4915112345678"), "DE");
        assert_eq!(market_of("447700900000"), "GB");
        assert_eq!(
            market_of("33612345678"),
            "OTHER",
            "France is not a listed market"
        );
    }

    #[test]
    fn every_category_inside_and_outside_the_window() {
        let b = book();
        let q = |kind: &MessageKind, w| {
            price(
                &b,
                T0,
                "393471234567",
                kind,
                w,
                &MarkupPlan::flat(Markup::None),
            )
            .expect("priced")
        };
        assert_eq!(
            q(&MessageKind::FreeForm, OPEN).free,
            Some(FreeBecause::Service)
        );
        assert_eq!(
            q(&template(UTILITY), OPEN).free,
            Some(FreeBecause::UtilityInWindow)
        );
        assert_eq!(q(&template(UTILITY), CLOSED).cost, 20_000);
        assert_eq!(
            q(&template(MARKETING), OPEN).cost,
            60_000,
            "marketing is charged inside the window"
        );
        assert_eq!(q(&template(MARKETING), CLOSED).cost, 60_000);
        assert_eq!(
            q(&template(AUTHENTICATION), OPEN).cost,
            30_000,
            "authentication is always charged"
        );
        for kind in [
            template(MARKETING),
            template(UTILITY),
            template(AUTHENTICATION),
            MessageKind::FreeForm,
        ] {
            let fep = q(&kind, FEP);
            assert_eq!(
                (fep.free, fep.price),
                (Some(FreeBecause::FreeEntryPoint), 0),
                "{kind:?} inside an FEP"
            );
        }
    }

    #[test]
    fn each_market_has_its_price() {
        let b = book();
        let prices: Vec<Micros> = [
            "393471234567",
            "5511988880000",
            "919800000001",
            "14155550100",
            "4915112345678",
            "447700900000",
            "33612345678",
        ]
        .iter()
        .map(|r| {
            price(
                &b,
                T0,
                r,
                &template(MARKETING),
                CLOSED,
                &MarkupPlan::flat(Markup::None),
            )
            .expect("priced")
            .cost
        })
        .collect();
        assert_eq!(
            prices,
            [60_000, 61_000, 62_000, 63_000, 64_000, 65_000, 66_000]
        );
    }

    #[test]
    fn the_card_switches_exactly_at_effective_from() {
        let b = book();
        let switch = T0.plus_hours(24);
        let before = price(
            &b,
            switch.plus_micros(-1),
            "393471234567",
            &template(MARKETING),
            CLOSED,
            &MarkupPlan::flat(Markup::None),
        )
        .expect("priced");
        let at = price(
            &b,
            switch,
            "393471234567",
            &template(MARKETING),
            CLOSED,
            &MarkupPlan::flat(Markup::None),
        )
        .expect("priced");
        assert_eq!(
            (before.card_version.as_str(), before.cost),
            ("2025-07", 60_000)
        );
        assert_eq!((at.card_version.as_str(), at.cost), ("2026-01", 70_000));
        assert_eq!(
            price(
                &b,
                T0.plus_micros(-1),
                "39",
                &template(MARKETING),
                CLOSED,
                &MarkupPlan::flat(Markup::None)
            ),
            Err(PricingError::NoCard(T0.plus_micros(-1)))
        );
    }

    #[test]
    fn cards_are_append_only() {
        let mut b = book();
        assert_eq!(
            b.append(card("old", T0.plus_hours(1), 1)),
            Err(PricingError::NotAppendOnly("old".into()))
        );
        assert!(b.append(card("2026-06", T0.plus_hours(48), 80_000)).is_ok());
    }

    #[test]
    fn markup_in_basis_points_and_fixed() {
        let b = book();
        let bp = price(
            &b,
            T0,
            "393471234567",
            &template(MARKETING),
            CLOSED,
            &MarkupPlan::flat(Markup::BasisPoints(250)),
        )
        .expect("priced");
        assert_eq!((bp.cost, bp.price), (60_000, 61_500));
        let fixed = price(
            &b,
            T0,
            "393471234567",
            &template(MARKETING),
            CLOSED,
            &MarkupPlan::flat(Markup::Fixed(5_000)),
        )
        .expect("priced");
        assert_eq!((fixed.cost, fixed.price), (60_000, 65_000));
        let free = price(
            &b,
            T0,
            "393471234567",
            &template(UTILITY),
            OPEN,
            &MarkupPlan::flat(Markup::Fixed(5_000)),
        )
        .expect("priced");
        assert_eq!(free.price, 0, "no markup on a free message");
        let mut plan = MarkupPlan::flat(Markup::BasisPoints(1_000));
        plan.per_category
            .insert(AUTHENTICATION.into(), Markup::Fixed(1));
        let per_category =
            |c: &str| price(&b, T0, "393471234567", &template(c), CLOSED, &plan).expect("priced");
        assert_eq!(per_category(MARKETING).price, 66_000, "the default: 10 %");
        assert_eq!(
            (
                per_category("authentication").price,
                per_category("authentication").markup
            ),
            (30_001, Markup::Fixed(1)),
            "the category's own markup"
        );
        // Half up: 33 bp of 1,001 µ = 3.3033 → 3.
        assert_eq!(Markup::BasisPoints(33).apply(1_001), 1_004);
        assert_eq!(Markup::BasisPoints(50).apply(1_000), 1_005);
    }

    #[test]
    fn an_unlisted_category_has_no_price() {
        let b = book();
        let r = price(
            &b,
            T0,
            "393471234567",
            &template("MARKETING_LITE"),
            CLOSED,
            &MarkupPlan::flat(Markup::None),
        );
        assert!(matches!(r, Err(PricingError::NoPrice { .. })));
    }

    #[test]
    fn the_shipped_card_parses_and_prices_every_market() {
        let card = parse_card(DEFAULT_CARD).expect("the default card parses");
        assert_eq!(card.version, "2025-07-01");
        assert_eq!(card.currency, "EUR");
        assert_eq!(
            card.effective_from,
            Timestamp::from_secs(1_751_328_000),
            "2025-07-01T00:00:00Z"
        );
        let b = RateBook::new(vec![card]).expect("book");
        let at = Timestamp::from_secs(1_764_000_000);
        for wa in [
            "393471234567",
            "5511988880000",
            "919800000001",
            "14155550100",
            "4915112345678",
            "447700900000",
            "33612345678",
        ] {
            for c in [MARKETING, UTILITY, AUTHENTICATION] {
                let q = price(
                    &b,
                    at,
                    wa,
                    &template(c),
                    CLOSED,
                    &MarkupPlan::flat(Markup::None),
                )
                .expect("priced");
                assert!(q.cost > 0, "{c} to {wa}");
            }
        }
    }

    #[test]
    fn card_syntax_errors_name_the_line() {
        let e = parse_card(
            "version = x\ncurrency = EUR\neffective_from = 2026-01-01T00:00:00Z\nMARKETING, IT, 1.5\n",
        );
        assert_eq!(e.map_err(|e| e.line), Err(4));
        let dup = parse_card(
            "version = x\ncurrency = EUR\neffective_from = 2026-01-01T00:00:00Z\nUTILITY, IT, 1\nutility, it, 2\n",
        );
        assert_eq!(dup.map_err(|e| e.line), Err(5));
        let huge = parse_card(
            "version = x\ncurrency = EUR\neffective_from = 2026-01-01T00:00:00Z\nUTILITY, IT, 1000000000000001\n",
        );
        assert_eq!(huge.map_err(|e| e.line), Err(4), "a price over the bound");
        assert!(
            parse_card("version = x\ncurrency = EUR\n").is_err(),
            "effective_from is required"
        );
        assert!(
            parse_card("version = x\ncurrency = EUR\neffective_from = 2026-13-01T00:00:00Z\n")
                .is_err()
        );
        assert_eq!(
            parse_utc("1970-01-01T00:00:00Z"),
            Some(Timestamp::from_secs(0))
        );
        assert_eq!(
            parse_utc("2024-02-29T12:00:00Z"),
            Some(Timestamp::from_secs(1_709_208_000))
        );
    }
}
