//! Fuzzing the token parsers (property tests): pagination tokens (stream and topological),
//! sync tokens, search
//! `next_batch`, hierarchy and public-room page tokens. Each accepts exactly what the server
//! prints: an accepted token re-encodes to the same string with every number within
//! `0..=MAX_TOKEN_POSITION`; anything else is `M_INVALID_PARAM` (never a panic, never a token
//! silently read as another).

use proptest::prelude::*;
use proptest::sample::Index;

use crate::Error;
use crate::directory::PageToken;
use crate::rooms::hierarchy;
use crate::rooms::read::{Direction, HistoryToken, MAX_TOKEN_POSITION, parse_token, token};
use crate::rooms::search::Cursor;
use crate::sync::SyncToken;
use myelin_store::HistoryPosition;
use myelin_store::SearchOrder;

/// Tokens worth keeping: real ones, edge numbers and the near misses a run once found.
const CORPUS: &[&str] = &[
    "s0",
    "t0_0",
    "t3_-7",
    "t3_7",
    "t9007199254740991_-9007199254740991",
    "t9007199254740992_1",
    "t1_-9007199254740992",
    "t1_-0",
    "t1_-",
    "t1_--1",
    "t-1_1",
    "t1_+1",
    "t01_1",
    "t1_01",
    "t1_-01",
    "t1",
    "t1_",
    "t_1",
    "t1_2_3",
    "T1_2",
    "s9007199254740991",
    "s9007199254740992",
    "s9223372036854775807",
    "s18446744073709551616",
    "s-1",
    "s+1",
    "s 1",
    "s1_",
    "s1_2",
    "s5_garbage",
    "s1_2_3_4_5_6",
    "s1_2_3_4_5_6_7",
    "s1_2_3_4_5_6_7_8",
    "s1__3_4_5_6_7",
    "s01_2_3_4_5_6_7",
    "s00",
    "s٣",
    "S1",
    "",
    "s",
    "recent_s5",
    "recent_t0_-5",
    "recent_t0_5",
    "recent_t0_-0",
    "recent_t3_-5",
    "recent_s5_1_2_3_4_5_6",
    "rank_0",
    "rank_+3",
    "rank_9223372036854775807",
    "rank_-1",
    "h0_3_1",
    "h+1_3_1",
    "h18446744073709551615_3_1",
    "h1_3_1_",
    "h1_-3_1",
    "nMTA6IXI6YS5leGFtcGxl",
    "pMTA6IXI6YS5leGFtcGxl",
    "nKzEwOiFyOmEuZXhhbXBsZQ",
    "n",
    "né",
];

fn invalid_param<T: std::fmt::Debug>(result: &crate::Result<T>) -> bool {
    matches!(result, Err(Error::InvalidParam(_)))
}

fn check_pagination(t: &str) -> Result<(), TestCaseError> {
    match parse_token(t) {
        Ok(n) => {
            prop_assert!((0..=MAX_TOKEN_POSITION).contains(&n));
            // Either the pagination form itself or a whole sync token naming that position.
            let sync = SyncToken::parse(t).ok();
            prop_assert!(
                token(n) == t || sync.is_some_and(|s| s.events == n),
                "{t:?}"
            );
        }
        Err(e) => prop_assert!(matches!(e, Error::InvalidParam(_)), "{e:?}"),
    }
    match HistoryToken::parse(t) {
        Ok(parsed) => {
            let range = -MAX_TOKEN_POSITION..=MAX_TOKEN_POSITION;
            match parsed {
                HistoryToken::Topological {
                    topological,
                    stream,
                } => {
                    prop_assert!((0..=MAX_TOKEN_POSITION).contains(&topological));
                    prop_assert!(range.contains(&stream));
                    prop_assert_eq!(parsed.encode(), t);
                }
                // The stream kinds are exactly what `parse_token` reads.
                HistoryToken::Stream(n) => {
                    prop_assert_eq!(parse_token(t).ok(), Some(n));
                    prop_assert_eq!(parsed.encode(), t);
                }
                HistoryToken::Sync(n) => {
                    prop_assert_eq!(SyncToken::parse(t).ok().map(|s| s.events), Some(n));
                }
            }
        }
        Err(e) => prop_assert!(matches!(e, Error::InvalidParam(_)), "{e:?}"),
    }
    Ok(())
}

fn check_sync(t: &str) -> Result<(), TestCaseError> {
    match SyncToken::parse(t) {
        Ok(s) => {
            for n in [
                s.events,
                s.account_data,
                s.receipts,
                s.to_device,
                s.presence,
                s.typing,
                s.device_lists,
            ] {
                prop_assert!((0..=MAX_TOKEN_POSITION).contains(&n));
            }
            // Six-part tokens (before device lists had a stream) gain a zero seventh part.
            let encoded = s.encode();
            let six_parts = format!("{t}_0");
            prop_assert!(encoded == t || (s.device_lists == 0 && encoded == six_parts));
            prop_assert_eq!(parse_token(t).ok(), Some(s.events));
            // Walking back from a sync token starts with its own position.
            prop_assert_eq!(
                HistoryToken::parse(t)
                    .ok()
                    .map(|h| h.towards(Direction::Backward)),
                Some(HistoryPosition::Stream(s.events + 1))
            );
        }
        Err(e) => prop_assert!(matches!(e, Error::InvalidParam(_)), "{e:?}"),
    }
    Ok(())
}

fn check_search(t: &str) -> Result<(), TestCaseError> {
    for order in [SearchOrder::Recent, SearchOrder::Rank] {
        match Cursor::parse(t, order) {
            Ok(cursor) => {
                prop_assert_eq!(cursor.token(), t);
                match cursor {
                    // Below 0 for backfilled history.
                    Cursor::Before(n) => {
                        prop_assert!((-MAX_TOKEN_POSITION..=MAX_TOKEN_POSITION).contains(&n))
                    }
                    Cursor::Offset(n) => prop_assert!((0..=MAX_TOKEN_POSITION).contains(&n)),
                }
            }
            Err(e) => prop_assert!(matches!(e, Error::InvalidParam(_)), "{e:?}"),
        }
    }
    Ok(())
}

fn check_hierarchy(t: &str) -> Result<(), TestCaseError> {
    for (depth, suggested) in [(3, true), (3, false), (0, false)] {
        let parsed = hierarchy::parse_token(t, depth, suggested);
        match parsed {
            Ok(skip) => {
                prop_assert_eq!(hierarchy::token(skip, depth, suggested), t);
                prop_assert!(skip as u64 <= MAX_TOKEN_POSITION as u64);
            }
            Err(_) => prop_assert!(invalid_param(&parsed)),
        }
    }
    Ok(())
}

fn check_directory(t: &str) -> Result<(), TestCaseError> {
    match PageToken::parse(t) {
        Ok(page) => prop_assert_eq!(page.encode(), t),
        Err(e) => prop_assert!(matches!(e, Error::InvalidParam(_)), "{e:?}"),
    }
    Ok(())
}

fn check_all(t: &str) -> Result<(), TestCaseError> {
    check_pagination(t)?;
    check_sync(t)?;
    check_search(t)?;
    check_hierarchy(t)?;
    check_directory(t)
}

/// Tokens the server prints, from arbitrary positions.
fn issued() -> impl Strategy<Value = String> {
    let position = 0..=MAX_TOKEN_POSITION;
    prop_oneof![
        position.clone().prop_map(token),
        (position.clone(), -MAX_TOKEN_POSITION..=MAX_TOKEN_POSITION).prop_map(|(t, s)| {
            HistoryToken::Topological {
                topological: t,
                stream: s,
            }
            .encode()
        }),
        prop::array::uniform7(position.clone()).prop_map(|p| SyncToken {
            events: p[0],
            account_data: p[1],
            receipts: p[2],
            to_device: p[3],
            presence: p[4],
            typing: p[5],
            device_lists: p[6],
        }
        .encode()),
        (-MAX_TOKEN_POSITION..=MAX_TOKEN_POSITION).prop_map(|n| Cursor::Before(n).token()),
        position.clone().prop_map(|n| Cursor::Offset(n).token()),
        (0usize..1 << 40, 0usize..10, any::<bool>())
            .prop_map(|(s, d, g)| hierarchy::token(s, d, g)),
        (any::<bool>(), 0..=MAX_TOKEN_POSITION as u64, ".{0,40}").prop_map(
            |(forward, members, room_id)| PageToken {
                forward,
                members,
                room_id,
            }
            .encode()
        ),
    ]
}

/// A character-level mutation: replace, delete or insert one character.
fn mutate(t: &str, edits: &[(Index, u8, char)]) -> String {
    let mut chars: Vec<char> = t.chars().collect();
    for (at, op, c) in edits {
        let i = at.index(chars.len() + 1);
        match op % 3 {
            0 if i < chars.len() => chars[i] = *c,
            1 if i < chars.len() => {
                chars.remove(i);
            }
            _ => chars.insert(i, *c),
        }
    }
    chars.into_iter().collect()
}

fn token_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            's', 't', 'h', 'n', 'p', '_', '-', '+', '0', '9', ' ', '\u{663}'
        ]),
        any::<char>(),
    ]
}

#[test]
fn corpus_tokens() {
    for t in CORPUS {
        check_all(t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
    }
}

/// Regression: `h18446744073709551615_3_1` parsed, and `skip + limit` overflowed.
#[test]
fn hierarchy_token_with_a_huge_skip_is_refused() {
    assert!(invalid_param(&hierarchy::parse_token(
        "h18446744073709551615_3_1",
        3,
        true
    )));
    assert!(invalid_param(&hierarchy::parse_token("h+1_3_1", 3, true)));
}

/// Regression: `rank_9223372036854775807` parsed, and `offset + 1` overflowed.
#[test]
fn search_rank_token_past_the_bound_is_refused() {
    assert!(Cursor::parse("rank_9223372036854775807", SearchOrder::Rank).is_err());
    assert!(Cursor::parse("rank_+3", SearchOrder::Rank).is_err());
}

/// Regression: a pagination token read only its first part, so `s5_garbage` was position 5.
#[test]
fn pagination_token_with_a_tail_must_be_a_whole_sync_token() {
    assert!(parse_token("s5_garbage").is_err());
    assert_eq!(parse_token("s5_1_2_3_4_5_6").unwrap(), 5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings(t in ".{0,48}") {
        check_all(&t)?;
    }

    #[test]
    fn token_shaped_strings(t in "(s|t|h|n|p|recent_s|rank_)[0-9_+-]{0,40}") {
        check_all(&t)?;
    }

    #[test]
    fn issued_tokens_round_trip(t in issued()) {
        check_all(&t)?;
    }

    /// What the server prints, it reads back as the same value.
    #[test]
    fn issued_tokens_parse_back(
        position in 0..=MAX_TOKEN_POSITION,
        parts in prop::array::uniform7(0..=MAX_TOKEN_POSITION),
        (skip, depth, suggested) in (0usize..1 << 40, 0usize..10, any::<bool>()),
        (forward, members, room_id) in (any::<bool>(), 0..=MAX_TOKEN_POSITION as u64, ".{0,40}"),
    ) {
        prop_assert_eq!(parse_token(&token(position)).ok(), Some(position));
        for stream in [position, -position] {
            let topological = HistoryToken::Topological { topological: position, stream };
            prop_assert_eq!(HistoryToken::parse(&topological.encode()).ok(), Some(topological));
        }
        let sync = SyncToken {
            events: parts[0], account_data: parts[1], receipts: parts[2], to_device: parts[3],
            presence: parts[4], typing: parts[5], device_lists: parts[6],
        };
        prop_assert_eq!(SyncToken::parse(&sync.encode()).ok(), Some(sync));
        prop_assert_eq!(parse_token(&sync.encode()).ok(), Some(parts[0]));
        for cursor in [Cursor::Before(position), Cursor::Before(-position), Cursor::Offset(position)] {
            let order = if matches!(cursor, Cursor::Before(_)) { SearchOrder::Recent } else { SearchOrder::Rank };
            prop_assert_eq!(Cursor::parse(&cursor.token(), order).ok(), Some(cursor));
        }
        let t = hierarchy::token(skip, depth, suggested);
        prop_assert_eq!(hierarchy::parse_token(&t, depth, suggested).ok(), Some(skip));
        let page = PageToken { forward, members, room_id };
        prop_assert_eq!(PageToken::parse(&page.encode()).ok(), Some(page));
    }

    #[test]
    fn mutated_tokens(
        seed in prop_oneof![issued(), prop::sample::select(CORPUS).prop_map(str::to_owned)],
        edits in prop::collection::vec((any::<Index>(), any::<u8>(), token_char()), 1..4),
    ) {
        check_all(&mutate(&seed, &edits))?;
    }
}
