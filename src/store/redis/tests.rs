//! The store's key names and error mapping, without a server.

use redis::cluster_routing::Slot;

use super::*;

/// Every key a login's scripts touch, and its channel.
fn names(store: &RedisStore, key: &LoginKey) -> [String; 3] {
    [
        store.record_key(key),
        store.lease_key(key),
        store.channel(key),
    ]
}

#[test]
fn every_key_of_a_login_hashes_to_one_cluster_slot() {
    let logins = [
        LoginKey::new("cid", "me@example.com"),
        LoginKey::new("", ""),
        LoginKey::new("{weird}", "user}{name"),
    ];
    let mut slots = std::collections::HashSet::new();
    for prefix in ["daxium-auth:", "", "staging:daxium:", "a:b:c"] {
        let store = RedisStore::builder("redis+cluster://127.0.0.1:7000")
            .key_prefix(prefix)
            .build()
            .unwrap();
        for login in &logins {
            let names = names(&store, login);
            let slot = Slot::for_key(&names[0]);
            for name in &names {
                assert_eq!(Slot::for_key(name), slot, "{name}");
                // The hash tag is the login's id, whatever the prefix.
                assert_eq!(slot, Slot::for_key(login.id()), "{name}");
            }
            slots.insert(format!("{slot:?}"));
        }
    }
    // Logins spread over the slots: the tag is not a constant.
    assert_eq!(slots.len(), logins.len());
}

#[test]
fn debug_names_the_deployment_and_its_nodes_but_no_password() {
    for (url, kind, address) in [
        ("redis://:hunter2@10.0.0.1:6379/", "single", "10.0.0.1:6379"),
        (
            "redis+cluster://u:hunter2@h1:7000,h2:7001/",
            "cluster",
            "h1:7000,h2:7001",
        ),
        (
            "rediss+sentinel://u:hunter2@s1:26379,s2/master",
            "sentinel",
            "s1:26379,s2:26379",
        ),
    ] {
        let store = RedisStore::new(url).unwrap();
        let text = format!("{store:?} {:?}", RedisStore::builder(url));
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(kind) && text.contains(address), "{text}");
    }
}

#[test]
fn a_prefix_that_could_move_the_hash_tag_is_refused() {
    for prefix in ["{}", "env{", "env}", "{env}:"] {
        let built = RedisStore::builder("redis://127.0.0.1/")
            .key_prefix(prefix)
            .build();
        assert!(built.is_err_and(|e| e.is_config()), "{prefix}");
    }
}

#[test]
fn every_script_names_the_keys_it_touches_in_keys() {
    // A script touches keys only through KEYS[n]: a key built from ARGV or
    // a string would escape the slot check of a cluster.
    for script in [
        include_str!("read.lua"),
        include_str!("compare_and_set.lua"),
        include_str!("acquire.lua"),
        include_str!("release.lua"),
        LIB,
    ] {
        for call in script.split("redis.call(").skip(1) {
            let (command, rest) = call.split_once(',').unwrap_or((call, ""));
            let command = command.trim_matches(|c| c == '\'' || c == ')');
            let keyless = ["INFO", "PUBLISH"].contains(&command);
            let first = rest.trim_start();
            assert!(
                keyless || first.starts_with("KEYS["),
                "{command} touches a key not in KEYS: {call}"
            );
        }
    }
}
