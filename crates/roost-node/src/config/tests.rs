#![allow(clippy::unwrap_used)]

use super::*;

const SAMPLE: &str = include_str!("../../../../deploy/roost.toml");

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_str(file: &str, vars: &[(&str, &str)], cli: &CliOverrides) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!(
        "roost-config-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("roost.toml");
    std::fs::write(&path, file).unwrap();
    let result = Config::load(Some(&path), env(vars), cli);
    std::fs::remove_dir_all(&dir).unwrap();
    result
}

fn err_string(result: Result<Config, ConfigError>) -> String {
    let e = result.unwrap_err();
    let s = e.to_string();
    assert!(!s.contains('\n'), "error spans several lines: {s}");
    s
}

#[test]
fn defaults_validate() {
    let config = Config::default();
    config.validate().unwrap();
    assert_eq!(
        config.mqtt.listen,
        "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.mqtt.server_keep_alive, None);
    assert_eq!(Config::from_toml_str("").unwrap(), config);
    assert_eq!(
        Config::load(None, Vec::new(), &CliOverrides::default()).unwrap(),
        config
    );
}

#[test]
fn sample_parses_and_validates() {
    let config = Config::from_toml_str(SAMPLE).unwrap();
    assert_eq!(
        config.mqtt.listen,
        "0.0.0.0:1883".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        config.http.listen,
        "0.0.0.0:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.node.data_dir, PathBuf::from("/var/lib/roost"));
    assert!(!config.mqtt.allow_anonymous);
    let kinds: Vec<_> = config.listeners.iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [
            ListenerKind::Tls,
            ListenerKind::Wss,
            ListenerKind::Quic,
            ListenerKind::Ws
        ],
        "the sample shows every listener kind beside mqtt.listen"
    );
}

#[test]
fn sample_sets_every_key() {
    // The sample documents every key: it must mention each one the effective config has.
    let mut full = Config::default();
    full.mqtt.server_keep_alive = Some(60);
    full.http.token_file = Some(PathBuf::from("/etc/roost/admin-token"));
    full.http.tls_cert = Some(PathBuf::from("/etc/roost/tls/admin.pem"));
    full.http.tls_key = Some(PathBuf::from("/etc/roost/tls/admin.key"));
    full.auth.password_file = Some(PathBuf::from("/etc/roost/passwords"));
    let table: toml::Table = toml::from_str(&full.to_toml_string()).unwrap();
    // Listener keys: every key a listener can have must be documented.
    let mut listener = ListenerConfig::new(ListenerKind::Tls, "0.0.0.0:8883".parse().unwrap());
    listener.name = Some("x".into());
    listener.cert = Some("c".into());
    listener.key = Some("k".into());
    listener.client_ca = Some("ca".into());
    listener.client_auth = Some(ClientAuthMode::Required);
    listener.allow_anonymous = Some(false);
    listener.max_connections = Some(1);
    listener.max_connect_rate = 1;
    listener.proxy_protocol = true;
    let lt: toml::Table = toml::from_str(&toml::to_string(&listener).unwrap()).unwrap();
    assert!(SAMPLE.contains("[[listeners]]"));
    for key in lt.keys() {
        assert!(
            SAMPLE.contains(&format!("\n{key} =")) || SAMPLE.contains(&format!("#   {key} ")),
            "sample does not document listeners.{key}"
        );
    }
    for (section, entries) in &table {
        let Some(entries) = entries.as_table() else {
            continue; // [[listeners]], above
        };
        assert!(SAMPLE.contains(&format!("[{section}]")), "[{section}]");
        for key in entries.keys() {
            assert!(
                SAMPLE.contains(&format!("\n{key} =")) || SAMPLE.contains(&format!("# {key} =")),
                "sample does not document {section}.{key}"
            );
        }
    }
}

#[test]
fn to_toml_string_round_trips() {
    let mut config = Config::from_toml_str(SAMPLE).unwrap();
    config.mqtt.server_keep_alive = Some(30);
    config.mqtt.queue_drop = QueueDrop::Newest;
    config.log.format = LogFormat::Json;
    let text = config.to_toml_string();
    assert_eq!(Config::from_toml_str(&text).unwrap(), config);
    let defaults = Config::default().to_toml_string();
    assert!(!defaults.contains("server_keep_alive"));
    assert!(defaults.contains("queue_drop = \"oldest\""));
}

#[test]
fn unknown_key_in_file_names_the_key() {
    let s = err_string(load_str(
        "[mqtt]\nlisen = \"0.0.0.0:1883\"\n",
        &[],
        &CliOverrides::default(),
    ));
    assert!(s.starts_with("invalid config in file "), "{s}");
    assert!(
        s.contains("roost.toml: mqtt.lisen = \"0.0.0.0:1883\": unknown field `lisen`"),
        "{s}"
    );

    let s = err_string(Config::from_toml_str("[mqt]\nlisten = \"0.0.0.0:1883\"\n"));
    assert!(
        s.starts_with(
            "invalid config in TOML input: mqt.listen = \"0.0.0.0:1883\": unknown field `mqt`"
        ),
        "{s}"
    );
    let s = err_string(Config::from_toml_str("[mqt]\n"));
    assert!(s.contains("mqt: unknown field `mqt`"), "{s}");
    let s = err_string(Config::from_toml_str("verbose = true\n"));
    assert!(s.contains("verbose = true: unknown field `verbose`"), "{s}");
}

#[test]
fn wrong_type_in_file_names_the_key() {
    let s = err_string(Config::from_toml_str(
        "[mqtt]\nmax_connections = \"many\"\n",
    ));
    assert!(
        s.starts_with(
            "invalid config in TOML input: mqtt.max_connections = \"many\": invalid type"
        ),
        "{s}"
    );
    let s = err_string(Config::from_toml_str("[mqtt]\nreceive_maximum = 70000\n"));
    assert!(s.contains("mqtt.receive_maximum = 70000: "), "{s}");
    let s = err_string(Config::from_toml_str("[mqtt]\nlisten = \"localhost\"\n"));
    assert!(s.contains("mqtt.listen = \"localhost\": "), "{s}");
    let s = err_string(Config::from_toml_str("[mqtt]\nqueue_drop = \"random\"\n"));
    assert!(
        s.contains("mqtt.queue_drop = \"random\": unknown variant `random`"),
        "{s}"
    );
    let s = err_string(Config::from_toml_str("mqtt = 5\n"));
    assert!(s.contains("mqtt = 5: invalid type"), "{s}");
}

#[test]
fn syntax_error_gives_line_and_column() {
    let s = err_string(Config::from_toml_str("[mqtt]\nmax_connections = = 5\n"));
    assert!(
        s.starts_with("invalid config in TOML input: line 2, column "),
        "{s}"
    );
}

#[test]
fn bad_value_per_bound_names_the_key() {
    // (TOML to add under its section, dotted key, expected Display).
    let cases: &[(&str, &str)] = &[
        (
            "[node]\ndata_dir = \"\"",
            "invalid config: node.data_dir = \"\": must not be empty",
        ),
        (
            "[mqtt]\nmax_connections = 0",
            "invalid config: mqtt.max_connections = 0: must be at least 1",
        ),
        (
            "[mqtt]\nmax_packet_size = 0",
            "invalid config: mqtt.max_packet_size = 0: must be between 1 and 268435460",
        ),
        (
            "[mqtt]\nmax_packet_size = 268435461",
            "invalid config: mqtt.max_packet_size = 268435461: must be between 1 and 268435460",
        ),
        (
            "[mqtt]\nreceive_maximum = 0",
            "invalid config: mqtt.receive_maximum = 0: must be at least 1",
        ),
        (
            "[mqtt]\nmax_inflight = 0",
            "invalid config: mqtt.max_inflight = 0: must be at least 1",
        ),
        (
            "[mqtt]\nmax_queued_messages = 0",
            "invalid config: mqtt.max_queued_messages = 0: must be at least 1",
        ),
        (
            "[mqtt]\nmax_queued_bytes = 0",
            "invalid config: mqtt.max_queued_bytes = 0: must be at least 1",
        ),
        (
            "[mqtt]\nmax_topic_levels = 0",
            "invalid config: mqtt.max_topic_levels = 0: must be at least 1",
        ),
        (
            "[mqtt]\nlisten_backlog = 0",
            "invalid config: mqtt.listen_backlog = 0: must be between 1 and 65535",
        ),
        (
            "[mqtt]\nlisten_backlog = 65536",
            "invalid config: mqtt.listen_backlog = 65536: must be between 1 and 65535",
        ),
        (
            "[mqtt]\nmax_topic_length = 0",
            "invalid config: mqtt.max_topic_length = 0: must be between 1 and 65535",
        ),
        (
            "[mqtt]\nmax_topic_length = 65536",
            "invalid config: mqtt.max_topic_length = 65536: must be between 1 and 65535",
        ),
        (
            "[mqtt]\nmax_client_id_length = 22",
            "invalid config: mqtt.max_client_id_length = 22: must be between 23 and 65535",
        ),
        (
            "[mqtt]\nmax_client_id_length = 65536",
            "invalid config: mqtt.max_client_id_length = 65536: must be between 23 and 65535",
        ),
        (
            "[mqtt]\nmax_keep_alive = 0",
            "invalid config: mqtt.max_keep_alive = 0: must be at least 1",
        ),
        (
            "[mqtt]\nserver_keep_alive = 0",
            "invalid config: mqtt.server_keep_alive = 0: must be between 1 and mqtt.max_keep_alive (65535)",
        ),
        (
            "[mqtt]\nmax_keep_alive = 60\nserver_keep_alive = 61",
            "invalid config: mqtt.server_keep_alive = 61: must be between 1 and mqtt.max_keep_alive (60)",
        ),
        (
            "[mqtt]\nmax_packet_size = 1048576\npending_connect_bytes = 1048575",
            "invalid config: mqtt.pending_connect_bytes = 1048575: must be at least 1048576",
        ),
        (
            "[mqtt]\nmax_qos = 3",
            "invalid config: mqtt.max_qos = 3: must be between 0 and 2",
        ),
        (
            "[mqtt]\nconnect_timeout_secs = 0",
            "invalid config: mqtt.connect_timeout_secs = 0: must be at least 1",
        ),
        (
            "[mqtt]\nlisten = \"0.0.0.0:1883\"\n[http]\nlisten = \"127.0.0.1:1883\"",
            "invalid config: http.listen = \"127.0.0.1:1883\": must not use the same port as mqtt.listen (\"0.0.0.0:1883\")",
        ),
        (
            "[log]\nlevel = \"\"",
            "invalid config: log.level = \"\": must not be empty",
        ),
    ];
    for (toml, expected) in cases {
        let e = Config::from_toml_str(toml).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }), "{toml}: {e:?}");
        assert_eq!(e.to_string(), *expected, "{toml}");
    }
}

#[test]
fn limits_at_their_bounds_are_accepted() {
    let toml = "[mqtt]\nmax_packet_size = 268435460\npending_connect_bytes = 268435460\n\
                max_client_id_length = 23\n\
                max_topic_length = 65535\nmax_qos = 0\nmax_keep_alive = 60\n\
                server_keep_alive = 60\ntopic_alias_maximum = 0\n\
                [node]\nsys_interval_secs = 0\n\
                [http]\nenabled = false\nlisten = \"127.0.0.1:1883\"\n";
    Config::from_toml_str(toml).unwrap();
    // Ephemeral ports never collide (tests bind both listeners to port 0).
    Config::from_toml_str("[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n")
        .unwrap();
}

#[test]
fn env_overrides_file() {
    let file =
        "[mqtt]\nmax_connections = 10\nlisten = \"127.0.0.1:1000\"\n[log]\nlevel = \"warn\"\n";
    let config = load_str(
        file,
        &[
            ("ROOST_MQTT__MAX_CONNECTIONS", "5000"),
            ("ROOST_MQTT__LISTEN", "0.0.0.0:1883"),
            ("ROOST_MQTT__ALLOW_ANONYMOUS", "false"),
            ("ROOST_MQTT__QUEUE_DROP", "newest"),
            ("ROOST_MQTT__SERVER_KEEP_ALIVE", "30"),
            ("ROOST_LOG__LEVEL", "debug"),
            ("ROOST_NODE__DATA_DIR", "/var/lib/roost"),
            ("ROOST_HTTP__ENABLED", "false"),
            ("PATH", "/usr/bin"),
        ],
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(config.mqtt.max_connections, 5000);
    assert_eq!(
        config.mqtt.listen,
        "0.0.0.0:1883".parse::<SocketAddr>().unwrap()
    );
    assert!(!config.mqtt.allow_anonymous);
    assert_eq!(config.mqtt.queue_drop, QueueDrop::Newest);
    assert_eq!(config.mqtt.server_keep_alive, Some(30));
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.node.data_dir, PathBuf::from("/var/lib/roost"));
    assert!(!config.http.enabled);
}

#[test]
fn env_values_that_look_like_toml_still_fit_string_keys() {
    let config = Config::load(
        None,
        env(&[
            ("ROOST_NODE__DATA_DIR", "123"),
            ("ROOST_LOG__LEVEL", "\"info,roost_node=trace\""),
            ("ROOST_LOG__FORMAT", "json"),
        ]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(config.node.data_dir, PathBuf::from("123"));
    assert_eq!(config.log.level, "info,roost_node=trace");
    assert_eq!(config.log.format, LogFormat::Json);

    // A log level that TOML reads as a number is still checked as a log level.
    let s = err_string(Config::load(
        None,
        env(&[("ROOST_LOG__LEVEL", "7")]),
        &CliOverrides::default(),
    ));
    assert!(s.starts_with("invalid config: log.level = \"7\": "), "{s}");
}

#[test]
fn env_bad_value_names_the_variable_and_key() {
    let s = err_string(Config::load(
        None,
        env(&[("ROOST_MQTT__MAX_CONNECTIONS", "lots")]),
        &CliOverrides::default(),
    ));
    assert!(
        s.starts_with(
            "invalid config in environment ROOST_MQTT__MAX_CONNECTIONS: mqtt.max_connections = \"lots\": invalid type: string \"lots\""
        ),
        "{s}"
    );
    let s = err_string(Config::load(
        None,
        env(&[("ROOST_MQTT__RECEIVE_MAXIMUM", "70000")]),
        &CliOverrides::default(),
    ));
    assert!(
        s.starts_with(
            "invalid config in environment ROOST_MQTT__RECEIVE_MAXIMUM: mqtt.receive_maximum = 70000: "
        ),
        "{s}"
    );
    assert!(s.contains("70000"), "{s}");
    // Bounds are checked after layering, like values from the file.
    let s = err_string(Config::load(
        None,
        env(&[("ROOST_MQTT__MAX_QOS", "3")]),
        &CliOverrides::default(),
    ));
    assert_eq!(
        s,
        "invalid config: mqtt.max_qos = 3: must be between 0 and 2"
    );
}

#[test]
fn cluster_settings_from_file_env_and_flags() {
    let config = load_str(
        "[cluster]\nnode_id = 2\nseeds = [\"1@10.0.0.1:7946\"]\n",
        &[("ROOST_CLUSTER__FORWARD_TIMEOUT_MS", "250")],
        &CliOverrides {
            seeds: vec!["3@h:1".into(), "4@h:2".into()],
            ..CliOverrides::default()
        },
    )
    .unwrap();
    assert_eq!(config.cluster.node_id, 2);
    assert_eq!(config.cluster.forward_timeout_ms, 250);
    assert_eq!(config.cluster.seeds, ["3@h:1", "4@h:2"]);
    for (text, want) in [
        (
            "[cluster]\nseeds = [\"x@h:1\"]",
            "cluster.seeds = \"x@h:1\": \"x@h:1\": node id \"x\" is not a number",
        ),
        (
            "[cluster]\nnode_id = 0",
            "cluster.node_id = 0: must be at least 1",
        ),
        (
            "[cluster]\nelection_timeout_ms = 1500",
            "cluster.session_lease_ms = 4000: must be at least 4 × cluster.election_timeout_ms (6000)",
        ),
        (
            "[cluster]\nheartbeat_ms = 500",
            "cluster.election_timeout_ms = 500: must be more than twice cluster.heartbeat_ms (500)",
        ),
    ] {
        let e = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    assert_eq!(
        parse_seed("2@127.0.0.1:7001").unwrap(),
        (2, "127.0.0.1:7001".into())
    );
    assert!(parse_seed("2@nohost").is_err());
    assert!(parse_seed("0@h:1").is_err());
}

#[test]
fn node_id_from_hostname_takes_the_pod_ordinal() {
    let flag = CliOverrides {
        node_id_from_hostname: true,
        ..CliOverrides::default()
    };
    let none = CliOverrides::default();
    // The file, the environment and the flag set it; HOSTNAME comes from the environment given
    // to `load`. A pod's ordinal starts at 0, a node id at 1.
    for (file, vars, cli, want) in [
        (
            "[cluster]\nnode_id_from_hostname = true\n",
            vec![("HOSTNAME", "roost-0")],
            &none,
            1,
        ),
        (
            "",
            vec![
                ("HOSTNAME", "roost-4"),
                ("ROOST_CLUSTER__NODE_ID_FROM_HOSTNAME", "true"),
            ],
            &none,
            5,
        ),
        (
            "",
            vec![("HOSTNAME", "roost-2.roost-headless.mqtt.svc.cluster.local")],
            &flag,
            3,
        ),
        // Off: the host name plays no part.
        ("", vec![("HOSTNAME", "roost-7")], &none, 1),
    ] {
        let config = load_str(file, &vars, cli).unwrap();
        assert_eq!(config.cluster.node_id, want, "{file:?} {vars:?}");
        // Resolved once: the loaded config is what the node runs with, and it validates and
        // round-trips as it is (Node::start validates it again).
        assert!(!config.cluster.node_id_from_hostname);
        config.validate().unwrap();
        assert_eq!(
            Config::from_toml_str(&config.to_toml_string()).unwrap(),
            config
        );
    }

    // A host name without an ordinal stops the start, naming the key.
    for hostname in ["roost", "roost-", "roost-x", "db01", "roost-1a", "-"] {
        let s = err_string(load_str("", &[("HOSTNAME", hostname)], &flag));
        assert!(
            s.starts_with("invalid config: cluster.node_id_from_hostname = true: the host name ")
                && s.contains(&format!("{hostname:?}"))
                && s.contains("does not end in -<ordinal>"),
            "{s}"
        );
    }
    let s = err_string(load_str(
        "",
        &[("HOSTNAME", "roost-18446744073709551615")],
        &flag,
    ));
    assert!(s.contains("is too large"), "{s}");

    // Exclusive with an explicit node id, from any source; `check-config` sees it too.
    let want = "invalid config: cluster.node_id = 4: cannot be set together with \
                cluster.node_id_from_hostname (--node-id-from-hostname): choose one";
    let s = err_string(load_str(
        "[cluster]\nnode_id = 4\nnode_id_from_hostname = true\n",
        &[("HOSTNAME", "roost-0")],
        &none,
    ));
    assert_eq!(s, want);
    let s = err_string(load_str(
        "",
        &[("HOSTNAME", "roost-0")],
        &CliOverrides {
            node_id: Some(4),
            node_id_from_hostname: true,
            ..CliOverrides::default()
        },
    ));
    assert_eq!(s, want);
    let e = Config::from_toml_str("[cluster]\nnode_id = 4\nnode_id_from_hostname = true\n")
        .unwrap_err()
        .to_string();
    assert_eq!(e, want);
    // `check-config` does not resolve it (the checking machine's name is not the pod's).
    let checked = Config::from_toml_str("[cluster]\nnode_id_from_hostname = true\n").unwrap();
    assert!(checked.cluster.node_id_from_hostname);
}

/// deploy/k8s/base's roost.toml, with the environment and arguments its StatefulSet gives pod
/// roost-4 of namespace `mqtt` (as the kubelet expands `$(POD_NAME)` and `$(POD_NAMESPACE)`),
/// and the production overlay's additions: what a pod loads. Keeps the manifests loadable as
/// keys change (scripts/validate-k8s checks their Kubernetes side).
#[test]
fn kubernetes_manifests_config_loads_in_a_pod() {
    const CONFIGMAP: &str = include_str!("../../../../deploy/k8s/base/configmap.yaml");
    let block = CONFIGMAP.split_once("roost.toml: |\n").unwrap().1;
    let file: String = block
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    let dns = |pod: &str| format!("{pod}.roost-headless.mqtt.svc.cluster.local:7946");
    let seeds = format!(
        "[\"1@{}\",\n\"2@{}\", \"3@{}\"]",
        dns("roost-0"),
        dns("roost-1"),
        dns("roost-2")
    );
    let advertise = dns("roost-4");
    let mqtt_advertise = "roost-4.roost-headless.mqtt.svc.cluster.local:1883";
    let base = vec![
        ("HOSTNAME", "roost-4"),
        ("POD_NAME", "roost-4"),
        ("POD_NAMESPACE", "mqtt"),
        ("ROOST_CLUSTER__ADVERTISE", advertise.as_str()),
        ("ROOST_MQTT__ADVERTISE", mqtt_advertise),
        ("ROOST_CLUSTER__SEEDS", seeds.as_str()),
        (
            "ROOST_CLUSTER__TLS_CERT",
            "/etc/roost/cluster-tls/roost-4.pem",
        ),
        (
            "ROOST_CLUSTER__TLS_KEY",
            "/etc/roost/cluster-tls/roost-4.key",
        ),
    ];
    let mut production = base.clone();
    production.push(("ROOST_MQTT__ALLOW_ANONYMOUS", "false"));
    production.push((
        "ROOST_AUTH__PASSWORD_FILE",
        "/etc/roost/passwords/passwords",
    ));
    let args = CliOverrides {
        node_id_from_hostname: true,
        ..CliOverrides::default()
    };
    for (vars, anonymous) in [(base, true), (production, false)] {
        let config = load_str(&file, &vars, &args).unwrap();
        let c = &config.cluster;
        assert_eq!(c.node_id, 5);
        assert_eq!(c.advertise.as_deref(), Some(advertise.as_str()));
        assert_eq!(
            c.seeds,
            [
                format!("1@{}", dns("roost-0")),
                format!("2@{}", dns("roost-1")),
                format!("3@{}", dns("roost-2"))
            ]
        );
        assert!(c.tls_cert.is_some() && c.tls_key.is_some() && c.tls_ca.is_some());
        assert_eq!(config.mqtt.allow_anonymous, anonymous);
        assert_eq!(config.mqtt.advertise.as_deref(), Some(mqtt_advertise));
        assert_eq!(config.listeners.len(), 1);
        // The pod's grace period (40 s) must exceed this with room (validate-k8s checks it).
        assert_eq!(c.drain_timeout_ms, 20_000);
    }
}

#[test]
fn node_id_from_hostname_parses_the_last_label_suffix() {
    for (hostname, want) in [
        ("roost-0", Ok(1)),
        ("roost-9\n", Ok(10)),
        ("my-roost-cluster-12", Ok(13)),
        ("roost-3.roost-headless", Ok(4)),
        ("roost", Err(())),
        ("roost-", Err(())),
        ("roost-+1", Err(())),
        ("roost.ns-1", Err(())),
        ("", Err(())),
    ] {
        assert_eq!(
            node_id_from_hostname(hostname).map_err(|_| ()),
            want,
            "{hostname:?}"
        );
    }
}

#[test]
fn mqtt_advertise_is_an_address_clients_can_use() {
    for ok in [
        "roost-0.roost-headless.mqtt.svc.cluster.local:1883",
        "10.0.0.1:1883",
        "[::1]:1883",
    ] {
        let config = Config::from_toml_str(&format!("[mqtt]\nadvertise = \"{ok}\"\n")).unwrap();
        assert_eq!(config.mqtt.advertise.as_deref(), Some(ok));
    }
    for bad in [
        "roost-0",
        ":1883",
        "roost-0:mqtt",
        "0.0.0.0:1883",
        "[::]:1883",
        "roost-0:0",
    ] {
        let e = Config::from_toml_str(&format!("[mqtt]\nadvertise = \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "invalid config: mqtt.advertise = {bad:?}: must be HOST:PORT that clients can connect to"
            )),
            "{e}"
        );
    }
    assert_eq!(Config::default().mqtt.advertise, None);
    let vars = [("ROOST_MQTT__ADVERTISE", "roost-2.roost-headless:1883")];
    let config = load_str("", &vars, &CliOverrides::default()).unwrap();
    assert_eq!(
        config.mqtt.advertise.as_deref(),
        Some("roost-2.roost-headless:1883")
    );
}

#[test]
fn advertise_may_be_a_dns_name() {
    for ok in [
        "roost-0.roost-headless.mqtt.svc.cluster.local:7946",
        "10.0.0.1:7946",
        "[::1]:7946",
    ] {
        let config = Config::from_toml_str(&format!("[cluster]\nadvertise = \"{ok}\"\n")).unwrap();
        assert_eq!(config.cluster.advertise.as_deref(), Some(ok));
    }
    for bad in ["roost-0", ":7946", "roost-0:http"] {
        let e = Config::from_toml_str(&format!("[cluster]\nadvertise = \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "invalid config: cluster.advertise = {bad:?}: must be HOST:PORT"
            )),
            "{e}"
        );
    }
}

#[test]
fn cli_overrides_env() {
    let cli = CliOverrides {
        mqtt: Some("10.0.0.1:1884".parse().unwrap()),
        http: Some("10.0.0.1:9090".parse().unwrap()),
        data_dir: Some(PathBuf::from("/srv/roost")),
        log_level: Some("trace".to_owned()),
        ..CliOverrides::default()
    };
    let config = load_str(
        "[mqtt]\nlisten = \"127.0.0.1:1000\"\n",
        &[
            ("ROOST_MQTT__LISTEN", "0.0.0.0:1883"),
            ("ROOST_HTTP__LISTEN", "0.0.0.0:8080"),
            ("ROOST_HTTP__TOKEN", "0123456789abcdef"),
            ("ROOST_NODE__DATA_DIR", "/var/lib/roost"),
            ("ROOST_LOG__LEVEL", "debug"),
        ],
        &cli,
    )
    .unwrap();
    assert_eq!(config.mqtt.listen, cli.mqtt.unwrap());
    assert_eq!(config.http.listen, cli.http.unwrap());
    assert_eq!(config.node.data_dir, PathBuf::from("/srv/roost"));
    assert_eq!(config.log.level, "trace");

    // CLI values are validated too.
    let cli = CliOverrides {
        log_level: Some("inof".to_owned()),
        ..CliOverrides::default()
    };
    let s = err_string(Config::load(None, Vec::new(), &cli));
    assert!(
        s.starts_with("invalid config: log.level = \"inof\": "),
        "{s}"
    );
}

#[test]
fn unknown_env_variable_names_it() {
    let s = err_string(Config::load(
        None,
        env(&[("ROOST_MQTT__LISEN", "0.0.0.0:1883")]),
        &CliOverrides::default(),
    ));
    assert!(
        s.starts_with(
            "invalid config in environment ROOST_MQTT__LISEN: mqtt.lisen = \"0.0.0.0:1883\": unknown field `lisen`"
        ),
        "{s}"
    );
    let s = err_string(Config::load(
        None,
        env(&[("ROOST_X__Y", "1")]),
        &CliOverrides::default(),
    ));
    assert!(
        s.starts_with("invalid config in environment ROOST_X__Y: x.y = 1: unknown field `x`"),
        "{s}"
    );
    let s = err_string(Config::load(
        None,
        env(&[("ROOST___LISTEN", "1")]),
        &CliOverrides::default(),
    ));
    assert!(
        s.starts_with("invalid config in environment ROOST___LISTEN: expected a name"),
        "{s}"
    );
}

#[test]
fn env_without_separator_is_ignored() {
    let config = Config::load(
        None,
        env(&[
            ("ROOST_BIN", "/usr/local/bin/roost"),
            ("ROOST_MQTT_LISTEN", "nonsense"),
            ("roost_mqtt__listen", "nonsense"),
        ]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn bad_log_level_rejected() {
    for level in ["info,roost=loud", "inof", "warn,,=", "[{"] {
        let toml = format!("[log]\nlevel = {level:?}\n");
        let e = Config::from_toml_str(&toml).unwrap_err();
        match &e {
            ConfigError::Invalid { key, value, .. } => {
                assert_eq!(*key, "log.level");
                assert_eq!(*value, format!("{level:?}"));
            }
            other => panic!("{level}: {other:?}"),
        }
        assert!(!e.to_string().contains('\n'), "{e}");
    }
    for level in [
        "info",
        "warn,roost_node=debug",
        "roost_core[session]=trace",
        "OFF",
    ] {
        let toml = format!("[log]\nlevel = {level:?}\n");
        Config::from_toml_str(&toml).unwrap();
    }
}

#[test]
fn read_error_names_the_path() {
    let path = Path::new("/nonexistent/roost.toml");
    let e = Config::load(Some(path), Vec::new(), &CliOverrides::default()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("cannot read config file /nonexistent/roost.toml: "),
        "{e}"
    );
}

// ---- item 23 (issue 7): the admin token and allowed hosts -------------------------------

const TOKEN: &str = "0123456789abcdef-item23";

#[test]
fn item23_non_loopback_http_without_token_is_refused_naming_the_key() {
    for listen in ["0.0.0.0:8080", "10.0.0.5:8080", "[::]:8080"] {
        let s = err_string(load_str(
            &format!("[http]\nlisten = \"{listen}\"\n"),
            &[],
            &CliOverrides::default(),
        ));
        assert!(
            s.starts_with("invalid config: http.token_file = (not set): "),
            "{s}"
        );
        assert!(s.contains("not a loopback address"), "{s}");
        assert!(s.contains("ROOST_HTTP__TOKEN"), "{s}");
    }
    // The --http flag is checked the same way.
    let cli = CliOverrides {
        http: Some("0.0.0.0:8080".parse().unwrap()),
        ..CliOverrides::default()
    };
    let s = err_string(Config::load(None, Vec::new(), &cli));
    assert!(s.contains("http.token_file"), "{s}");

    // Loopback without a token, or no HTTP listener at all: allowed.
    for file in [
        "[http]\nlisten = \"127.0.0.1:8080\"\n",
        "[http]\nlisten = \"[::1]:8080\"\n",
        "[http]\nenabled = false\nlisten = \"0.0.0.0:8080\"\n",
    ] {
        load_str(file, &[], &CliOverrides::default()).unwrap();
    }
    // A token from the file, the environment or a token file: allowed.
    let config = load_str(
        "[http]\nlisten = \"0.0.0.0:8080\"\n",
        &[("ROOST_HTTP__TOKEN", TOKEN)],
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(config.http.admin_token().unwrap().unwrap().expose(), TOKEN);
    load_str(
        &format!("[http]\nlisten = \"0.0.0.0:8080\"\ntoken = \"{TOKEN}\"\n"),
        &[],
        &CliOverrides::default(),
    )
    .unwrap();
    load_str(
        "[http]\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"/run/secrets/admin-token\"\n",
        &[],
        &CliOverrides::default(),
    )
    .unwrap();
}

#[test]
fn item23_token_is_never_printed() {
    let config = load_str(
        "",
        &[("ROOST_HTTP__TOKEN", TOKEN)],
        &CliOverrides::default(),
    )
    .unwrap();
    assert!(config.http.token.is_some());
    assert!(!config.to_toml_string().contains(TOKEN));
    assert!(!format!("{config:?}").contains(TOKEN));
}

#[test]
fn item23_bad_token_settings_name_the_key() {
    /// (file, environment, what the error must say)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        (
            "[http]\ntoken_file = \"/etc/roost/admin-token\"\n",
            &[("ROOST_HTTP__TOKEN", TOKEN)],
            "http.token_file = \"/etc/roost/admin-token\": cannot be set together with http.token",
        ),
        (
            "",
            &[("ROOST_HTTP__TOKEN", "short")],
            "http.token = <redacted>: the token must be at least 16",
        ),
        (
            "",
            &[("ROOST_HTTP__TOKEN", "has a space in the middle")],
            "http.token = <redacted>: the token must be visible ASCII",
        ),
        (
            "[http]\ntoken_file = \"\"\n",
            &[],
            "http.token_file = \"\": must not be empty",
        ),
        (
            "[http]\nallowed_hosts = [\"roost-0.roost:8080\"]\n",
            &[],
            "http.allowed_hosts = \"roost-0.roost:8080\": each entry must be a host name",
        ),
        (
            "[http]\nallowed_hosts = [\".\"]\n",
            &[],
            "http.allowed_hosts = \".\"",
        ),
    ];
    for (file, vars, want) in cases {
        let s = err_string(load_str(file, vars, &CliOverrides::default()));
        assert!(s.contains(want), "{file:?} {vars:?}: {s}");
        assert!(!s.contains("has a space"), "the token is shown: {s}");
    }
}

#[test]
fn http_tls_files_go_together() {
    let cases: &[(&str, &str)] = &[
        (
            "[http]\ntls_cert = \"/etc/roost/tls/admin.pem\"\n",
            "invalid config: http.tls_key = (missing): http.tls_cert and tls_key go together",
        ),
        (
            "[http]\ntls_key = \"/etc/roost/tls/admin.key\"\n",
            "invalid config: http.tls_cert = (missing): http.tls_cert and tls_key go together",
        ),
        (
            "[http]\ntls_cert = \"\"\ntls_key = \"/etc/roost/tls/admin.key\"\n",
            "invalid config: http.tls_cert = \"\": must not be empty",
        ),
    ];
    for (file, want) in cases {
        let s = err_string(load_str(file, &[], &CliOverrides::default()));
        assert!(s.starts_with(want), "{file:?}: {s}");
    }
    // Both: valid, and printed back (the files are only read at start).
    let config = load_str(
        "[http]\ntls_cert = \"/etc/roost/tls/admin.pem\"\ntls_key = \"/etc/roost/tls/admin.key\"\n",
        &[],
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(
        config.http.tls_cert.as_deref(),
        Some(std::path::Path::new("/etc/roost/tls/admin.pem"))
    );
    assert!(config
        .to_toml_string()
        .contains("tls_key = \"/etc/roost/tls/admin.key\""));
    // From the environment too.
    let s = err_string(load_str(
        "",
        &[("ROOST_HTTP__TLS_CERT", "/etc/roost/tls/admin.pem")],
        &CliOverrides::default(),
    ));
    assert!(s.contains("http.tls_key = (missing)"), "{s}");
}

#[test]
fn item23_token_file_is_read_and_trimmed() {
    let dir = std::env::temp_dir().join(format!("roost-item23-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("admin-token");
    std::fs::write(&path, format!("  {TOKEN}\n")).unwrap();
    let mut http = HttpConfig {
        token_file: Some(path.clone()),
        ..HttpConfig::default()
    };
    assert_eq!(http.admin_token().unwrap().unwrap().expose(), TOKEN);
    std::fs::write(&path, "\n").unwrap();
    let s = http.admin_token().unwrap_err().to_string();
    assert!(s.starts_with("invalid config: http.token_file = "), "{s}");
    assert!(s.contains("at least 16"), "{s}");
    http.token_file = Some(dir.join("missing"));
    let s = http.admin_token().unwrap_err().to_string();
    assert!(
        s.contains("http.token_file") && s.contains("cannot read it"),
        "{s}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(HttpConfig::default().admin_token().unwrap(), None);
}

#[test]
fn item23_token_compare() {
    let t = AdminToken::new(TOKEN).unwrap();
    assert!(t.matches(TOKEN.as_bytes()));
    assert!(!t.matches(&TOKEN.as_bytes()[..TOKEN.len() - 1]));
    assert!(!t.matches(format!("{TOKEN}x").as_bytes()));
    assert!(!t.matches(b""));
    let mut flipped = TOKEN.as_bytes().to_vec();
    flipped[0] ^= 1;
    assert!(!t.matches(&flipped));
}

#[test]
fn listener_errors_name_the_entry_and_key() {
    for (toml, key) in [
        (
            "[[listeners]]\nkind = \"tls\"\nlisten = \"127.0.0.1:8883\"\nkey = \"k\"\n",
            "listeners[0].cert",
        ),
        (
            "[[listeners]]\nkind = \"ws\"\nlisten = \"127.0.0.1:8083\"\ncert = \"c\"\n",
            "listeners[0].cert",
        ),
        (
            "[[listeners]]\nkind = \"tls\"\nlisten = \"127.0.0.1:8883\"\ncert = \"c\"\nkey = \"k\"\nclient_auth = \"optional\"\n",
            "listeners[0].client_auth",
        ),
        (
            "[[listeners]]\nkind = \"ws\"\nlisten = \"127.0.0.1:1883\"\n",
            "listeners[0].listen",
        ),
        (
            "[[listeners]]\nkind = \"ws\"\nlisten = \"127.0.0.1:8083\"\n[[listeners]]\nkind = \"ws\"\nlisten = \"0.0.0.0:8083\"\n",
            "listeners[1].listen",
        ),
        (
            "[[listeners]]\nkind = \"ws\"\nlisten = \"127.0.0.1:8083\"\nname = \"a\"\n[[listeners]]\nkind = \"tcp\"\nlisten = \"127.0.0.1:8084\"\nname = \"a\"\n",
            "listeners[1].name",
        ),
        (
            "[[listeners]]\nkind = \"ws\"\nlisten = \"127.0.0.1:8083\"\npath = \"mqtt\"\n",
            "listeners[0].path",
        ),
        (
            "[[listeners]]\nkind = \"ws\"\nlisten = \"127.0.0.1:8083\"\nhandshake_timeout_secs = 0\n",
            "listeners[0].handshake_timeout_secs",
        ),
    ] {
        let e = Config::from_toml_str(toml).unwrap_err();
        match &e {
            ConfigError::Invalid { key: k, .. } => assert_eq!(k, key, "{toml}"),
            other => panic!("{toml}: {other}"),
        }
    }
    // A misspelled key in a listener is named too.
    let e = Config::from_toml_str(
        "[[listeners]]\nkind = \"ws\"\nlisten = \"127.0.0.1:8083\"\npaht = \"/mqtt\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("paht"), "{e}");
}

#[test]
fn listener_flags_add_listeners_with_the_tls_files() {
    let cli = CliOverrides {
        mqtts: Some("127.0.0.1:8883".parse().unwrap()),
        ws: Some("127.0.0.1:8083".parse().unwrap()),
        tls_cert: Some("/c.pem".into()),
        tls_key: Some("/k.pem".into()),
        tls_client_ca: Some("/ca.pem".into()),
        passwords: Some("/pw".into()),
        ..CliOverrides::default()
    };
    let config = Config::load(None, env(&[]), &cli).unwrap();
    assert_eq!(config.listeners.len(), 2);
    let tls = &config.listeners[0];
    assert_eq!(tls.kind, ListenerKind::Tls);
    assert_eq!(tls.cert.as_deref(), Some(Path::new("/c.pem")));
    assert_eq!(tls.client_auth_mode(), ClientAuthMode::Required);
    let ws = &config.listeners[1];
    assert_eq!(
        (ws.kind, ws.path.as_str(), ws.cert.is_none()),
        (ListenerKind::Ws, "/mqtt", true)
    );
    assert_eq!(config.auth.password_file.as_deref(), Some(Path::new("/pw")));
}

#[test]
fn node_io_is_epoll_by_default_and_io_uring_needs_shards_and_the_feature() {
    assert_eq!(Config::default().node.io, NodeIo::Epoll);
    let s = err_string(Config::from_toml_str("[node]\nio = \"kqueue\"\n"));
    assert!(s.contains("node.io"), "{s}");
    let invalid_io = |toml: &str| match Config::from_toml_str(toml).unwrap_err() {
        ConfigError::Invalid { key, .. } => assert_eq!(key, "node.io", "{toml}"),
        other => panic!("{toml}: expected node.io to be named, got {other:?}"),
    };
    // Without shards there is nothing for io_uring to run.
    invalid_io("[node]\nio = \"io_uring\"\n");
    let with_shards = "[node]\nshards = 2\nio = \"io_uring\"\n";
    if cfg!(all(target_os = "linux", feature = "io-uring")) {
        let c = Config::from_toml_str(with_shards).unwrap();
        assert_eq!(c.node.io, NodeIo::IoUring);
        let c = load_str(
            "[node]\nshards = 2\n",
            &[("ROOST_NODE__IO", "io_uring")],
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.node.io, NodeIo::IoUring);
    } else {
        // A build without the feature names the key instead of ignoring it.
        invalid_io(with_shards);
    }
}

#[test]
fn shards_default_to_the_shared_runtime_and_are_bounded() {
    assert_eq!(Config::default().node.shards, 0);
    let c = Config::from_toml_str("[node]\nshards = 4\n").unwrap();
    assert_eq!(c.node.shards, 4);
    let c = load_str("", &[("ROOST_NODE__SHARDS", "3")], &CliOverrides::default()).unwrap();
    assert_eq!(c.node.shards, 3);
    Config::from_toml_str("[node]\nshards = 1024\n").unwrap();
    let e = Config::from_toml_str("[node]\nshards = 1025\n").unwrap_err();
    match e {
        ConfigError::Invalid { key, .. } => assert_eq!(key, "node.shards"),
        other => panic!("expected node.shards to be named, got {other:?}"),
    }
}
