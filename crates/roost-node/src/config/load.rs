//! Loading and validating the config: file < environment < command line, every bad key named
//! with its value (house style, convention 9). The types and their defaults are in the parent
//! module.

use super::*;

impl Config {
    /// Builds the configuration from the file (if any), then the `ROOST_<SECTION>__<KEY>`
    /// variables in `env`, then `cli`, and validates it. Precedence: file < environment < CLI.
    ///
    /// `env` is passed in so tests need not touch the process environment; the binary passes
    /// `std::env::vars()`. Variables starting with `ROOST_` but without `__` are ignored
    /// (they belong to other tools, e.g. `ROOST_BIN`); those with `__` must name a known
    /// key. A variable's value is read as a TOML value when that fits the key (`5000`,
    /// `false`) and as a plain string otherwise (`0.0.0.0:1883`, `debug`), so strings never
    /// need TOML quotes.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: &CliOverrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                parse_table(&text, &format!("file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let env: Vec<(String, String)> = env.into_iter().collect();
        let hostname = env
            .iter()
            .find(|(name, _)| name == "HOSTNAME")
            .map(|(_, value)| value.clone());
        merge_env(&mut table, env)?;
        let mut config = deserialize_table(table, "merged configuration")?;
        cli.apply(&mut config);
        config.validate()?;
        if config.cluster.node_id_from_hostname {
            config.cluster.node_id = node_id_from_host(hostname)?;
            // Resolved: the config now says what the node runs with (and validates again).
            config.cluster.node_id_from_hostname = false;
        }
        Ok(config)
    }

    /// Parses a TOML document on its own (no environment, no CLI) and validates it. Used by
    /// `roost check-config FILE`; errors say `TOML input` as their origin.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let origin = "TOML input";
        let table = parse_table(s, origin)?;
        let config = deserialize_table(table, origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every bound documented on the fields, plus that the MQTT and HTTP listeners do
    /// not collide. Returns the first violation, naming the dotted key and the bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let node = &self.node;
        if node.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "node.data_dir",
                format!("{:?}", node.data_dir.display().to_string()),
                "must not be empty",
            ));
        }

        between("node.shards", node.shards, 0, MAX_SHARDS)?;
        if node.io == NodeIo::IoUring {
            if !cfg!(all(target_os = "linux", feature = "io-uring")) {
                return Err(invalid(
                    "node.io",
                    "\"io_uring\"".into(),
                    "this roost was built without io_uring (the `io-uring` cargo feature, Linux only)",
                ));
            }
            if node.shards == 0 {
                return Err(invalid(
                    "node.io",
                    "\"io_uring\"".into(),
                    "io_uring runs on connection shards only: set node.shards >= 1",
                ));
            }
        }

        let m = &self.mqtt;
        at_least("mqtt.max_connections", m.max_connections, 1)?;
        at_least("mqtt.max_pending_connections", m.max_pending_connections, 1)?;
        between("mqtt.listen_backlog", m.listen_backlog, 1, 65535)?;
        at_least("mqtt.write_timeout_secs", m.write_timeout_secs, 1)?;
        at_least(
            "mqtt.max_subscriptions_per_client",
            m.max_subscriptions_per_client,
            1,
        )?;
        at_least("mqtt.max_retained_messages", m.max_retained_messages, 1)?;
        between(
            "mqtt.max_packet_size",
            m.max_packet_size,
            1,
            MQTT_MAX_PACKET_SIZE,
        )?;
        at_least(
            "mqtt.max_retained_bytes",
            m.max_retained_bytes,
            m.max_packet_size as usize,
        )?;
        // Below one largest CONNECT, a client with a large will could never connect.
        at_least(
            "mqtt.pending_connect_bytes",
            m.pending_connect_bytes,
            (m.max_packet_size as usize).max(65_536),
        )?;
        at_least("mqtt.receive_maximum", m.receive_maximum, 1)?;
        at_least("mqtt.max_inflight", m.max_inflight, 1)?;
        at_least("mqtt.max_queued_messages", m.max_queued_messages, 1)?;
        at_least("mqtt.max_queued_bytes", m.max_queued_bytes, 1)?;
        at_least("mqtt.max_topic_levels", m.max_topic_levels, 1)?;
        between("mqtt.max_topic_length", m.max_topic_length, 1, 65_535)?;
        between(
            "mqtt.max_client_id_length",
            m.max_client_id_length,
            23,
            65_535,
        )?;
        at_least("mqtt.max_keep_alive", m.max_keep_alive, 1)?;
        if let Some(keep_alive) = m.server_keep_alive {
            if keep_alive == 0 || keep_alive > m.max_keep_alive {
                return Err(invalid(
                    "mqtt.server_keep_alive",
                    keep_alive.to_string(),
                    format!(
                        "must be between 1 and mqtt.max_keep_alive ({})",
                        m.max_keep_alive
                    ),
                ));
            }
        }
        if let Some(advertise) = &m.advertise {
            if !is_client_address(advertise) {
                return Err(invalid(
                    "mqtt.advertise",
                    format!("{advertise:?}"),
                    "must be HOST:PORT that clients can connect to (HOST an IP address or a DNS \
                     name, not 0.0.0.0 or ::; PORT not 0)",
                ));
            }
        }
        between("mqtt.max_qos", m.max_qos, 0, 2)?;
        at_least("mqtt.connect_timeout_secs", m.connect_timeout_secs, 1)?;
        between("mqtt.rate_burst_secs", m.rate_burst_secs, 1, 3600)?;

        if self.http.enabled && listeners_collide(self.http.listen, m.listen) {
            return Err(invalid(
                "http.listen",
                format!("\"{}\"", self.http.listen),
                format!(
                    "must not use the same port as mqtt.listen (\"{}\")",
                    m.listen
                ),
            ));
        }

        validate_http(&self.http)?;

        let c = &self.cluster;
        at_least("cluster.node_id", c.node_id, 1)?;
        if c.node_id_from_hostname && c.node_id != ClusterSettings::default().node_id {
            return Err(invalid(
                "cluster.node_id",
                c.node_id.to_string(),
                "cannot be set together with cluster.node_id_from_hostname \
                 (--node-id-from-hostname): choose one",
            ));
        }
        for seed in &c.seeds {
            if let Err(reason) = parse_seed(seed) {
                return Err(invalid("cluster.seeds", format!("{seed:?}"), reason));
            }
        }
        if let Some(advertise) = &c.advertise {
            if !is_host_port(advertise) {
                return Err(invalid(
                    "cluster.advertise",
                    format!("{advertise:?}"),
                    "must be HOST:PORT (HOST an IP address or a DNS name)",
                ));
            }
        }
        at_least("cluster.heartbeat_ms", c.heartbeat_ms, 1)?;
        if c.election_timeout_ms <= 2 * c.heartbeat_ms {
            return Err(invalid(
                "cluster.election_timeout_ms",
                c.election_timeout_ms.to_string(),
                format!(
                    "must be more than twice cluster.heartbeat_ms ({})",
                    c.heartbeat_ms
                ),
            ));
        }
        at_least("cluster.forward_timeout_ms", c.forward_timeout_ms, 1)?;
        at_least("cluster.commit_timeout_ms", c.commit_timeout_ms, 1)?;
        at_least("cluster.drain_timeout_ms", c.drain_timeout_ms, 1)?;
        // An election (up to twice the maximum election timeout with pre-vote and jitter)
        // must not end every node's lease.
        if c.session_lease_ms < 4 * c.election_timeout_ms {
            return Err(invalid(
                "cluster.session_lease_ms",
                c.session_lease_ms.to_string(),
                format!(
                    "must be at least 4 × cluster.election_timeout_ms ({})",
                    4 * c.election_timeout_ms
                ),
            ));
        }
        if listeners_collide(c.listen, m.listen)
            || (self.http.enabled && listeners_collide(c.listen, self.http.listen))
        {
            return Err(invalid(
                "cluster.listen",
                format!("\"{}\"", c.listen),
                "must not use the same port as mqtt.listen or http.listen",
            ));
        }

        let tls = [&c.tls_cert, &c.tls_key, &c.tls_ca];
        if tls.iter().any(|t| t.is_some()) && !tls.iter().all(|t| t.is_some()) {
            let (key, _) = [
                ("cluster.tls_cert", &c.tls_cert),
                ("cluster.tls_key", &c.tls_key),
                ("cluster.tls_ca", &c.tls_ca),
            ]
            .into_iter()
            .find(|(_, v)| v.is_none())
            .unwrap_or(("cluster.tls_cert", &None));
            return Err(invalid(
                key,
                "(missing)".into(),
                "cluster.tls_cert, tls_key and tls_ca go together: set all three or none",
            ));
        }
        self.validate_listeners()?;
        validate_log_level(&self.log.level)
    }

    /// Every `[[listeners]]` entry, and that no two listeners (these, `mqtt.listen`,
    /// `http.listen`, `cluster.listen`) share a port.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        // (name, address, UDP): TCP and UDP ports do not collide with each other.
        let mut taken: Vec<(String, SocketAddr, bool)> = vec![
            ("mqtt.listen".into(), self.mqtt.listen, false),
            ("cluster.listen".into(), self.cluster.listen, false),
        ];
        if self.http.enabled {
            taken.push(("http.listen".into(), self.http.listen, false));
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate(i)?;
            let udp = l.kind.udp();
            if let Some((other, _, _)) = taken
                .iter()
                .find(|(_, a, u)| *u == udp && listeners_collide(l.listen, *a))
            {
                return Err(invalid(
                    format!("listeners[{i}].listen"),
                    format!("\"{}\"", l.listen),
                    format!("must not use the same port as {other}"),
                ));
            }
            if !names.insert(l.display_name()) {
                return Err(invalid(
                    format!("listeners[{i}].name"),
                    format!("{:?}", l.display_name()),
                    "another listener has the same name",
                ));
            }
            taken.push((format!("listeners[{i}].listen"), l.listen, udp));
        }
        Ok(())
    }

    /// The effective configuration as a TOML document (every key, defaults included), for
    /// printing what a node runs with. Parsing it back gives an equal [`Config`].
    pub fn to_toml_string(&self) -> String {
        // Serializing plain structs of numbers, strings and addresses cannot fail, except
        // for a `data_dir` that is not UTF-8; say so in the output rather than panic.
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration as TOML: {e}\n"))
    }
}

impl HttpConfig {
    /// The admin token the listener requires, if any: `token`, or the contents of
    /// `token_file` with surrounding whitespace removed. Reads the file, so the node calls it
    /// once at start, before binding; [`Config::validate`] only checks that a token is
    /// configured where one is required. An unreadable file or a malformed token is an
    /// [`ConfigError::Invalid`] naming the key (the token itself is never shown).
    pub fn admin_token(&self) -> Result<Option<AdminToken>, ConfigError> {
        if let Some(token) = &self.token {
            return AdminToken::new(token.expose())
                .map(Some)
                .map_err(|reason| invalid("http.token", "<redacted>".to_owned(), reason));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let shown = format!("{:?}", path.display().to_string());
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "http.token_file",
                shown.clone(),
                format!("cannot read it: {e}"),
            )
        })?;
        AdminToken::new(text.trim())
            .map(Some)
            .map_err(|reason| invalid("http.token_file", shown, reason))
    }
}

/// The `[http]` rules beyond types: token sources exclusive and well-formed, a token wherever
/// the listener is reachable from other machines, `allowed_hosts` entries that are host names,
/// `tls_cert` and `tls_key` both or neither.
fn validate_http(h: &HttpConfig) -> Result<(), ConfigError> {
    if let (Some(path), Some(_)) = (&h.token_file, &h.token) {
        return Err(invalid(
            "http.token_file",
            format!("{:?}", path.display().to_string()),
            "cannot be set together with http.token (ROOST_HTTP__TOKEN): choose one",
        ));
    }
    if let Some(path) = &h.token_file {
        if path.as_os_str().is_empty() {
            return Err(invalid(
                "http.token_file",
                "\"\"".to_owned(),
                "must not be empty",
            ));
        }
    }
    if let Some(token) = &h.token {
        AdminToken::new(token.expose())
            .map_err(|reason| invalid("http.token", "<redacted>".to_owned(), reason))?;
    }
    if h.enabled && !h.listen.ip().is_loopback() && h.token.is_none() && h.token_file.is_none() {
        return Err(invalid(
            "http.token_file",
            "(not set)".to_owned(),
            format!(
                "an admin token is required because http.listen (\"{}\") is not a loopback \
                 address: set http.token_file (or ROOST_HTTP__TOKEN), or listen on 127.0.0.1",
                h.listen
            ),
        ));
    }
    match (&h.tls_cert, &h.tls_key) {
        (Some(_), None) | (None, Some(_)) => {
            let missing = if h.tls_cert.is_none() {
                "http.tls_cert"
            } else {
                "http.tls_key"
            };
            return Err(invalid(
                missing,
                "(missing)".into(),
                "http.tls_cert and tls_key go together: set both or neither",
            ));
        }
        _ => {}
    }
    for (key, path) in [("http.tls_cert", &h.tls_cert), ("http.tls_key", &h.tls_key)] {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid(key, "\"\"".to_owned(), "must not be empty"));
        }
    }
    for host in &h.allowed_hosts {
        let name = host.strip_prefix('.').unwrap_or(host);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(invalid(
                "http.allowed_hosts",
                format!("{host:?}"),
                "each entry must be a host name without port (letters, digits, '-', '.', '_'), \
                 optionally starting with '.' to allow every name under a domain",
            ));
        }
    }
    Ok(())
}

impl CliOverrides {
    fn apply(&self, config: &mut Config) {
        if let Some(addr) = self.mqtt {
            config.mqtt.listen = addr;
        }
        if let Some(addr) = self.http {
            config.http.listen = addr;
        }
        if let Some(dir) = &self.data_dir {
            config.node.data_dir = dir.clone();
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        if let Some(id) = self.node_id {
            config.cluster.node_id = id;
        }
        if self.node_id_from_hostname {
            config.cluster.node_id_from_hostname = true;
        }
        if let Some(addr) = self.cluster {
            config.cluster.listen = addr;
        }
        if !self.seeds.is_empty() {
            config.cluster.seeds.clone_from(&self.seeds);
        }
        for (kind, addr) in [
            (ListenerKind::Tls, self.mqtts),
            (ListenerKind::Ws, self.ws),
            (ListenerKind::Wss, self.wss),
            (ListenerKind::Quic, self.quic),
        ] {
            let Some(addr) = addr else { continue };
            let mut l = ListenerConfig::new(kind, addr);
            if kind.tls() {
                l.cert.clone_from(&self.tls_cert);
                l.key.clone_from(&self.tls_key);
                l.client_ca.clone_from(&self.tls_client_ca);
            }
            config.listeners.push(l);
        }
        if let Some(p) = &self.passwords {
            config.auth.password_file = Some(p.clone());
        }
    }
}

/// `cluster.node_id_from_hostname`: the node id from `hostname` (the `HOSTNAME` variable), or
/// else from `/proc/sys/kernel/hostname` (what `hostname(1)` prints, without libc).
fn node_id_from_host(hostname: Option<String>) -> Result<u64, ConfigError> {
    const KERNEL: &str = "/proc/sys/kernel/hostname";
    let key = "cluster.node_id_from_hostname";
    let hostname = match hostname {
        Some(h) if !h.trim().is_empty() => h,
        _ => std::fs::read_to_string(KERNEL).map_err(|e| {
            invalid(
                key,
                "true".to_owned(),
                format!("cannot read the host name: HOSTNAME is not set and {KERNEL}: {e}"),
            )
        })?,
    };
    node_id_from_hostname(&hostname).map_err(|reason| invalid(key, "true".to_owned(), reason))
}

/// Parses a TOML document into a table and type-checks every entry, so that an error names
/// the dotted key and, for syntax errors, the line and column.
pub(super) fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    let table = text.parse::<toml::Table>().map_err(|e| {
        let message = match e.span() {
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                format!("line {line}, column {column}: {}", one_line(e.message()))
            }
            None => one_line(e.message()),
        };
        parse_error(origin, message)
    })?;
    for (section, value) in &table {
        match value {
            toml::Value::Table(entries) => {
                for (key, value) in entries {
                    check_entry(section, Some(key), value.clone())
                        .map_err(|message| parse_error(origin, message))?;
                }
                // An empty `[section]` is legal; check that the section itself exists.
                if entries.is_empty() {
                    check_entry(section, None, value.clone())
                        .map_err(|message| parse_error(origin, message))?;
                }
            }
            _ => check_entry(section, None, value.clone())
                .map_err(|message| parse_error(origin, message))?,
        }
    }
    Ok(table)
}

/// Type-checks one value by deserializing a [`Config`] that contains only it. Returns the
/// error message prefixed with the dotted key.
pub(super) fn check_entry(
    section: &str,
    key: Option<&str>,
    value: toml::Value,
) -> Result<(), String> {
    // Show scalar values the way they were written (`"localhost"`, `-1`); tables are too long.
    let shown = match &value {
        toml::Value::Table(_) | toml::Value::Array(_) => String::new(),
        scalar => format!(" = {scalar}"),
    };
    let mut outer = toml::Table::new();
    let dotted = match key {
        Some(key) => {
            let mut inner = toml::Table::new();
            inner.insert(key.to_owned(), value);
            outer.insert(section.to_owned(), toml::Value::Table(inner));
            format!("{section}.{key}")
        }
        None => {
            outer.insert(section.to_owned(), value);
            section.to_owned()
        }
    };
    match outer.try_into::<Config>() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{dotted}{shown}: {}", one_line(e.message()))),
    }
}

/// Merges `ROOST_<SECTION>__<KEY>` variables into `table`, in name order so that the error
/// reported for several bad variables does not depend on the order of the environment.
pub(super) fn merge_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| {
            name.strip_prefix(ENV_PREFIX)
                .is_some_and(|rest| rest.contains(ENV_SEPARATOR))
        })
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let origin = format!("environment {name}");
        let rest = name.strip_prefix(ENV_PREFIX).unwrap_or_default();
        let Some((section, key)) = rest.split_once(ENV_SEPARATOR) else {
            continue;
        };
        if section.is_empty() || key.is_empty() {
            return Err(parse_error(
                &origin,
                format!("expected a name of the form {ENV_PREFIX}<SECTION>{ENV_SEPARATOR}<KEY>"),
            ));
        }
        let section = section.to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        let value = env_value(&section, &key, &raw).map_err(|m| parse_error(&origin, m))?;
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(entries) => {
                entries.insert(key, value);
            }
            // Cannot happen: the file's sections were type-checked as tables.
            _ => {
                return Err(parse_error(
                    &origin,
                    format!("{section}: is not a table in the file"),
                ))
            }
        }
    }
    Ok(())
}

/// Chooses how to read an environment value: as a TOML value when it parses as one and fits
/// the key (`5000`, `true`), else as a string (`0.0.0.0:1883`, `debug`, or `123` for a
/// string key). If neither fits, the error is the one for the reading the user most likely
/// meant: the TOML one when the value parsed as TOML.
pub(super) fn env_value(section: &str, key: &str, raw: &str) -> Result<toml::Value, String> {
    let as_string = toml::Value::String(raw.to_owned());
    match toml::Value::deserialize(toml::de::ValueDeserializer::new(raw)) {
        Ok(parsed) => match check_entry(section, Some(key), parsed.clone()) {
            Ok(()) => Ok(parsed),
            Err(parsed_error) => match check_entry(section, Some(key), as_string.clone()) {
                Ok(()) => Ok(as_string),
                Err(_) => Err(parsed_error),
            },
        },
        Err(_) => check_entry(section, Some(key), as_string.clone()).map(|()| as_string),
    }
}

pub(super) fn deserialize_table(table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
    table
        .try_into::<Config>()
        .map_err(|e| parse_error(origin, one_line(e.message())))
}

pub(super) fn parse_error(origin: &str, message: String) -> ConfigError {
    ConfigError::Parse {
        origin: origin.to_owned(),
        message,
    }
}

pub(super) fn invalid(
    key: impl Into<String>,
    value: String,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value,
        reason: reason.into(),
    }
}

pub(super) fn at_least<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(
            key,
            value.to_string(),
            format!("must be at least {min}"),
        ));
    }
    Ok(())
}

pub(super) fn between<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            value.to_string(),
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Two listeners collide when they would bind the same port on overlapping addresses. Port 0
/// (an ephemeral port, used by tests) never collides.
pub(super) fn listeners_collide(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks log filter directives (also used by the runtime log-level API).
pub(crate) fn validate_log_level(level: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| invalid("log.level", format!("{level:?}"), reason);
    if level.trim().is_empty() {
        return Err(bad("must not be empty".to_owned()));
    }
    if let Err(e) = EnvFilter::builder().parse(level) {
        return Err(bad(format!(
            "not a valid tracing filter: {}",
            one_line(&e.to_string())
        )));
    }
    for directive in level.split(',') {
        let directive = directive.trim();
        if directive.contains('=') || directive.contains('[') {
            continue;
        }
        if directive.parse::<LevelFilter>().is_err() {
            return Err(bad(format!(
                "`{directive}` is not a level (trace, debug, info, warn, error, off); \
                 to filter a target write `{directive}=<level>`"
            )));
        }
    }
    Ok(())
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Error messages from toml/serde are usually one line; make sure, so that every
/// [`ConfigError`] prints as exactly one line.
pub(super) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
