use super::*;

#[test]
fn side_keys_share_the_account_slot() {
    let k = Keys::new("certgate:");
    assert_eq!(k.account("alice"), "certgate:acct:alice");
    assert_eq!(k.account_tickets("alice"), "{certgate:acct:alice}:tickets");
    // Redis hashes only the part inside the first `{…}` when there is one.
    let hashed = |key: &str| -> String {
        match key
            .find('{')
            .and_then(|o| key[o + 1..].find('}').map(|c| (o, c)))
        {
            Some((o, c)) if c > 0 => key[o + 1..o + 1 + c].to_string(),
            _ => key.to_string(),
        }
    };
    assert_eq!(hashed(&k.account("alice")), "certgate:acct:alice");
    assert_eq!(hashed(&k.account_tickets("alice")), "certgate:acct:alice");
    assert_eq!(hashed(&k.account_certs("alice")), "certgate:acct:alice");
    assert_eq!(k.revoked("0a"), "certgate:revoked:0a");
    assert_eq!(k.ticket("ff"), "certgate:ticket:ff");
    assert_eq!(k.events(), "certgate:events");
}

#[test]
fn slots_are_computed_as_redis_does() {
    // The reference value from the Redis Cluster specification.
    assert_eq!(crc16(b"123456789"), 0x31C3);
    for key in [
        "certgate:meta",
        "certgate:revoked:0a",
        "{certgate:acct:alice}:tickets",
        "a{}b",
        "a{b}c{d}",
        "{",
        "}{x}",
        "",
    ] {
        assert_eq!(
            Some(redis::cluster_routing::Slot::for_key(key)),
            redis::cluster_routing::Slot::new(key_slot(key.as_bytes())),
            "{key:?}"
        );
    }
}

#[test]
fn every_slot_has_a_marker_in_that_slot() {
    let k = Keys::new("certgate:");
    assert_eq!(slot_tags().len(), SLOTS);
    let mut seen = std::collections::HashSet::new();
    for slot in 0..SLOTS {
        let marker = k.slot_marker(slot);
        assert_eq!(usize::from(key_slot(marker.as_bytes())), slot, "{marker}");
        assert!(marker.starts_with("certgate:slot:{"), "{marker}");
        assert!(seen.insert(marker));
    }
    assert_eq!(k.slot_marker(0), "certgate:slot:{3560}");
    // A key's marker shares its slot, so one script may read both.
    for key in [
        k.revoked("0a"),
        k.account("alice"),
        k.ticket("ff"),
        k.meta(),
    ] {
        assert_eq!(
            key_slot(k.marker_for(&key).as_bytes()),
            key_slot(key.as_bytes()),
            "{key}"
        );
    }
}

#[test]
fn hash_tags_are_found_as_redis_finds_them() {
    assert_eq!(hash_tag(b"{gw}:"), Some(&b"gw"[..]));
    assert_eq!(hash_tag(b"x{gw}y:"), Some(&b"gw"[..]));
    // Empty or unclosed braces are no hash tag.
    assert_eq!(hash_tag(b"a{}b:"), None);
    assert_eq!(hash_tag(b"a{b:"), None);
}

#[test]
fn a_prefix_with_braces_is_refused() {
    for prefix in ["{gw}:", "x{gw}y:", "a{}b:", "a{b:", "a}b:"] {
        let e = check_prefix(prefix).expect_err(prefix);
        assert!(e.to_string().contains("must not contain"), "{e}");
    }
    check_prefix("certgate:").unwrap();
    check_prefix("gw1:").unwrap();
}

#[test]
fn scan_pattern_escapes_glob_characters() {
    assert_eq!(Keys::new("a*b[").all_pattern(), "a\\*b\\[*");
}

#[test]
fn flat_replies_pair_up() {
    let m = pairs(vec!["a".into(), "1".into(), "b".into(), "2".into()]);
    assert_eq!(m.get("a").map(String::as_str), Some("1"));
    assert_eq!(m.get("b").map(String::as_str), Some("2"));
}

#[test]
fn undecodable_records_are_corrupt_not_panics() {
    let mut f = Fields::new();
    f.insert("generation".into(), "x".into());
    f.insert("two_factor".into(), "1".into());
    f.insert("created_at".into(), "1".into());
    assert!(matches!(
        decode_account("a", &f),
        Err(StoreError::Corrupt(_))
    ));
    let mut r = Fields::new();
    r.insert("reason".into(), "nonsense".into());
    r.insert("revoked_at".into(), "1".into());
    assert!(matches!(
        decode_revocation("0a", &r),
        Err(StoreError::Corrupt(_))
    ));
}
