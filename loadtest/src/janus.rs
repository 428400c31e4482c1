//! The Janus target: starts Debian's Janus (VideoRoom plugin, HTTP transport) on loopback with a
//! generated configuration, and joins the same simulated participants through a Janus signaling
//! adapter: Janus sessions and handles over its HTTP API (long-poll for events), JSEP offers and
//! answers carried to and from the str0m client's `publish_external` / `receive_external`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use moien_client::{Client, ClientError};
use moien_protocol::{SubscribedTrack, TrackKind};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::moien::client_config;
use crate::scenario::{Group, Member};
use crate::stats::Recorder;

const PLUGIN: &str = "janus.plugin.videoroom";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Events a session keeps for a request that waits; later ones are dropped (nobody reads them).
const EVENT_QUEUE: usize = 64;

/// The running Janus and what the adapter knows about its rooms.
pub struct JanusTarget {
    pub pid: Option<u32>,
    /// Where the clients bind: the load tester's end of the veth pair.
    client_ip: IpAddr,
    api: Api,
    /// Declared last: dropped after the child is gone.
    netns: Option<Netns>,
    child: Option<Child>,
    dir: PathBuf,
    control: Option<Session>,
    /// Room name → (Janus room id, publishers' feed ids by identity).
    rooms: HashMap<String, (u64, Vec<(String, u64)>)>,
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        let tx = format!("{:016x}", rand::random::<u64>());
        body["transaction"] = json!(tx);
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("POST {path}"))?
            .text()
            .await?;
        let v: Value = serde_json::from_str(&resp).context("Janus answered non-JSON")?;
        if v["janus"] == "error" {
            bail!("Janus error: {}", v["error"]);
        }
        Ok(v)
    }
}

/// A Janus session: its id, and the events its long-poll task brings in.
struct Session {
    id: u64,
    api: Api,
    events: Mutex<mpsc::Receiver<Value>>,
    poller: JoinHandle<()>,
}

impl Session {
    async fn create(api: &Api) -> anyhow::Result<Session> {
        let v = api.post("", json!({"janus": "create"})).await?;
        let id = v["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no session id in {v}"))?;
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let poll_api = api.clone();
        let poller = tokio::spawn(async move {
            let url = format!("{}/{id}?maxev=10", poll_api.base);
            loop {
                let r = poll_api.http.get(&url).send().await;
                let Ok(r) = r else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Ok(text) = r.text().await else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let events = match v {
                    Value::Array(a) => a,
                    one => vec![one],
                };
                for e in events {
                    if e["janus"] == "keepalive" {
                        continue;
                    }
                    // Bounded: events nobody waits for are dropped when the queue is full.
                    let _ = tx.try_send(e);
                }
            }
        });
        Ok(Session {
            id,
            api: api.clone(),
            events: Mutex::new(rx),
            poller,
        })
    }

    async fn attach(&self) -> anyhow::Result<u64> {
        let v = self
            .api
            .post(
                &format!("/{}", self.id),
                json!({"janus": "attach", "plugin": PLUGIN}),
            )
            .await?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("no handle id in {v}"))
    }

    /// Sends a plugin message; a synchronous answer is returned as is, an `ack` is followed by
    /// waiting for the event of `handle` whose plugin data passes `want`.
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
        want: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut msg = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let mut events = self.events.lock().await;
        let v = self
            .api
            .post(&format!("/{}/{handle}", self.id), msg)
            .await?;
        if v["janus"] != "ack" {
            let data = &v["plugindata"]["data"];
            if data["error"].is_string() {
                bail!("VideoRoom: {}", data["error"]);
            }
            return Ok(v);
        }
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let e = tokio::time::timeout_at(deadline, events.recv())
                .await
                .map_err(|_| anyhow!("no answer from Janus within {REQUEST_TIMEOUT:?}"))?
                .ok_or_else(|| anyhow!("Janus event stream ended"))?;
            if e["sender"].as_u64() != Some(handle) || e["janus"] != "event" {
                continue;
            }
            let data = &e["plugindata"]["data"];
            if data["error"].is_string() {
                bail!("VideoRoom: {}", data["error"]);
            }
            if want(data) {
                return Ok(e);
            }
        }
    }

    async fn destroy(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(3),
            self.api
                .post(&format!("/{}", self.id), json!({"janus": "destroy"})),
        )
        .await;
        self.poller.abort();
    }
}

/// One simulated participant on Janus: its clients (publisher, subscriber) and its session.
pub struct JanusMember {
    clients: Vec<Client>,
    session: Option<Session>,
}

impl JanusMember {
    pub async fn leave(self) {
        for c in self.clients {
            let _ = tokio::time::timeout(Duration::from_secs(3), c.leave()).await;
        }
        if let Some(s) = self.session {
            s.destroy().await;
        }
    }
}

/// A network namespace of our own holding Janus, joined to ours by a veth pair.
///
/// Janus does not gather ICE candidates on loopback (it skips loopback interfaces and then
/// offers every other address of the machine), so it runs in a namespace whose only non-loopback
/// interface is one end of a veth pair; the clients bind the other end. Nothing leaves the
/// machine: both ends exist only here. Removed on drop, also on failure.
struct Netns {
    name: String,
    outer: String,
    pub outer_ip: Ipv4Addr,
    pub inner_ip: Ipv4Addr,
}

fn ip_cmd(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    fn create() -> anyhow::Result<Netns> {
        let id = std::process::id();
        let octet = (id % 250) as u8 + 1;
        let ns = Netns {
            name: format!("moienlt{id}"),
            outer: format!("mlt{id}a"),
            outer_ip: Ipv4Addr::new(10, 213, octet, 1),
            inner_ip: Ipv4Addr::new(10, 213, octet, 2),
        };
        let inner = format!("mlt{id}b");
        let (o, i) = (format!("{}/30", ns.outer_ip), format!("{}/30", ns.inner_ip));
        // Leftovers of a killed run with the same pid.
        let _ = ip_cmd(&["netns", "del", &ns.name]);
        let _ = ip_cmd(&["link", "del", &ns.outer]);
        ip_cmd(&["netns", "add", &ns.name])?;
        let steps: [&[&str]; 7] = [
            &[
                "link", "add", &ns.outer, "type", "veth", "peer", "name", &inner,
            ],
            &["link", "set", &inner, "netns", &ns.name],
            &["addr", "add", &o, "dev", &ns.outer],
            &["link", "set", &ns.outer, "up"],
            &["-n", &ns.name, "addr", "add", &i, "dev", &inner],
            &["-n", &ns.name, "link", "set", &inner, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip_cmd(step)?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip_cmd(&["link", "del", &self.outer]);
        let _ = ip_cmd(&["netns", "del", &self.name]);
    }
}

/// Where Debian's Janus keeps its modules (read from the reference config when possible).
fn module_folder(reference: &Path, key: &str, fallback: &str) -> String {
    std::fs::read_to_string(reference.join("janus.jcfg"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix(key)?.trim_start().strip_prefix('=')?;
                Some(rest.split('"').nth(1)?.to_string())
            })
        })
        .unwrap_or_else(|| format!("/usr/lib/x86_64-linux-gnu/janus/{fallback}"))
}

/// Every `.so` in `folder` except `keep`, comma-separated (what Janus's `disable` takes).
fn all_but(folder: &str, keep: &str) -> String {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".so") && n != keep)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.join(",")
}

/// The generated configuration: loopback only, VideoRoom and HTTP only, quiet logging, no
/// session timeout (the load tester ends its sessions itself).
pub fn write_config(
    dir: &Path,
    reference: &Path,
    ip: Ipv4Addr,
    http_port: u16,
) -> anyhow::Result<()> {
    let plugins = module_folder(reference, "plugins_folder", "plugins");
    let transports = module_folder(reference, "transports_folder", "transports");
    let events = module_folder(reference, "events_folder", "events");
    let loggers = module_folder(reference, "loggers_folder", "loggers");
    let main = format!(
        r#"general: {{
  configs_folder = "{dir}"
  plugins_folder = "{plugins}"
  transports_folder = "{transports}"
  events_folder = "{events}"
  loggers_folder = "{loggers}"
  debug_level = 2
  session_timeout = 0
  interface = "{ip}"
  server_name = "moien-loadtest-janus"
}}
certificates: {{
}}
media: {{
  rtp_port_range = "40000-60000"
}}
nat: {{
  nice_debug = false
  ice_enforce_list = "{ip}"
  ignore_mdns = true
}}
plugins: {{
  disable = "{dp}"
}}
transports: {{
  disable = "{dt}"
}}
loggers: {{
  disable = "{dl}"
}}
events: {{
  broadcast = false
  disable = "{de}"
}}
"#,
        dir = dir.display(),
        dp = all_but(&plugins, "libjanus_videoroom.so"),
        dt = all_but(&transports, "libjanus_http.so"),
        dl = all_but(&loggers, ""),
        de = all_but(&events, ""),
    );
    std::fs::write(dir.join("janus.jcfg"), main)?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n  json = \"plain\"\n  base_path = \"/janus\"\n  http = true\n  \
             port = {http_port}\n  ip = \"{ip}\"\n  https = false\n}}\n\
             admin: {{\n  admin_http = false\n}}\n"
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(())
}

/// Janus's HTTP port inside its own namespace, where nothing else listens.
const HTTP_PORT: u16 = 8088;

impl JanusTarget {
    pub async fn spawn(bin: &Path, reference: &Path) -> anyhow::Result<JanusTarget> {
        let dir = std::env::temp_dir().join(format!(
            "moien-loadtest-janus-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let netns = Netns::create()
            .context("creating the network namespace for Janus (needs root and iproute2)")?;
        let port = HTTP_PORT;
        write_config(&dir, reference, netns.inner_ip, port)?;
        // `ip netns exec` execs Janus in place: the pid stays Janus's.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns.name])
            .arg(bin)
            .arg("-F")
            .arg(&dir)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // MOIEN_LOADTEST_JANUS_LOG=FILE keeps Janus's log (verbose: debug level 5).
        match std::env::var_os("MOIEN_LOADTEST_JANUS_LOG") {
            Some(path) => {
                let log = std::fs::File::create(&path)?;
                cmd.arg("-d").arg("5").stdout(log.try_clone()?).stderr(log);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        crate::die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (install it with `apt-get install -y janus`)",
                bin.display()
            )
        })?;
        let pid = child.id();
        let api = Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(40))
                .build()
                .context("HTTP client")?,
            base: format!("http://{}:{port}/janus", netns.inner_ip),
        };
        let mut target = JanusTarget {
            pid,
            client_ip: IpAddr::V4(netns.outer_ip),
            netns: Some(netns),
            api,
            child: Some(child),
            dir,
            control: None,
            rooms: HashMap::new(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ok = target
                .api
                .http
                .get(format!("{}/info", target.api.base))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                target.stop_ref().await;
                bail!("Janus did not answer on its HTTP API within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match Session::create(&target.api).await {
            Ok(s) => target.control = Some(s),
            Err(e) => {
                target.stop_ref().await;
                return Err(e);
            }
        }
        Ok(target)
    }

    /// The Janus room of `name`, created on first use.
    async fn room(&mut self, name: &str) -> anyhow::Result<u64> {
        if let Some((id, _)) = self.rooms.get(name) {
            return Ok(*id);
        }
        let id = 1_000 + self.rooms.len() as u64;
        let control = self
            .control
            .as_ref()
            .ok_or_else(|| anyhow!("no control session"))?;
        let handle = control.attach().await?;
        control
            .message(
                handle,
                json!({
                    "request": "create",
                    "room": id,
                    "publishers": 200,
                    "bitrate": 0,
                    "fir_freq": 0,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "audiolevel_ext": true,
                    "audiolevel_event": false,
                    "transport_wide_cc_ext": true,
                    "notify_joining": false,
                    "is_private": false,
                }),
                None,
                |d| d["videoroom"] == "created",
            )
            .await
            .context("creating the VideoRoom room")?;
        self.rooms.insert(name.to_string(), (id, Vec::new()));
        Ok(id)
    }

    /// Publishers of the group publish first; then everyone who receives subscribes, in one
    /// subscriber handle, to every other publisher of the room (no renegotiation needed).
    pub async fn join_group(
        &mut self,
        g: &Group,
        recorders: &[Option<Arc<Recorder>>],
        pace: bool,
    ) -> anyhow::Result<Vec<JanusMember>> {
        let room = self.room(&g.room).await?;
        let mut members: Vec<(JanusMember, &Member, Option<Arc<Recorder>>)> = Vec::new();
        for (m, r) in g.members.iter().zip(recorders) {
            if let Some(r) = r {
                r.signaling_starts(Instant::now());
            }
            let session = Session::create(&self.api).await?;
            let mut jm = JanusMember {
                clients: Vec::new(),
                session: None,
            };
            if m.publishes() {
                match publish(&session, room, m, r.clone(), pace, self.client_ip).await {
                    Ok((client, feed)) => {
                        jm.clients.push(client);
                        if let Some((_, feeds)) = self.rooms.get_mut(&g.room) {
                            feeds.push((m.identity.clone(), feed));
                        }
                    }
                    Err(e) => {
                        session.destroy().await;
                        for (done, _, _) in members {
                            done.leave().await;
                        }
                        return Err(e.context(format!("{} publishing on Janus", m.identity)));
                    }
                }
            }
            jm.session = Some(session);
            members.push((jm, m, r.clone()));
        }
        // Janus lets subscribers in only once a publisher's PeerConnection is up.
        for (jm, m, _) in members.iter_mut() {
            if let Some(c) = jm.clients.first_mut()
                && m.publishes()
                && let Err(e) = c
                    .wait_until("publisher connected to Janus", REQUEST_TIMEOUT, |r| {
                        r.publisher_connected
                    })
                    .await
            {
                let e = anyhow!("{}: {e}", m.identity);
                for (done, _, _) in members {
                    done.leave().await;
                }
                return Err(e);
            }
        }
        let feeds = self
            .rooms
            .get(&g.room)
            .map(|(_, f)| f.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut failure = None;
        for (mut jm, m, r) in members {
            if m.subscribe && failure.is_none() {
                let others: Vec<u64> = feeds
                    .iter()
                    .filter(|(id, _)| *id != m.identity)
                    .map(|(_, f)| *f)
                    .collect();
                if let Some(session) = jm.session.as_ref()
                    && !others.is_empty()
                {
                    let existing = jm.clients.first();
                    match subscribe(session, room, &others, m, r, pace, self.client_ip, existing)
                        .await
                    {
                        Ok(Some(c)) => jm.clients.push(c),
                        Ok(None) => {}
                        Err(e) => {
                            failure =
                                Some(e.context(format!("{} subscribing on Janus", m.identity)))
                        }
                    }
                }
            }
            out.push(jm);
        }
        if let Some(e) = failure {
            for jm in out {
                jm.leave().await;
            }
            return Err(e);
        }
        Ok(out)
    }

    async fn stop_ref(&mut self) {
        if let Some(s) = self.control.take() {
            s.poller.abort();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.netns = None;
    }

    pub async fn stop(mut self) {
        self.stop_ref().await;
    }
}

async fn publish(
    session: &Session,
    room: u64,
    m: &Member,
    recorder: Option<Arc<Recorder>>,
    pace: bool,
    bind: IpAddr,
) -> anyhow::Result<(Client, u64)> {
    let handle = session.attach().await?;
    // The token is unused by Janus; the client only needs a config. The same client receives
    // later (`receive_external_offer`), so it records too.
    let mut config = client_config(String::new(), String::new(), m, recorder, pace);
    config.bind_ip = bind;
    let feed = Arc::new(std::sync::Mutex::new(0u64));
    let feed_out = feed.clone();
    let identity = m.identity.clone();
    let client = Client::publish_external(config, |offer| async move {
        let offer_copy = offer.clone();
        let e = session
            .message(
                handle,
                json!({
                    "request": "joinandconfigure",
                    "room": room,
                    "ptype": "publisher",
                    "display": identity,
                    "audio": true,
                    "video": true,
                }),
                Some(json!({"type": "offer", "sdp": offer, "trickle": false})),
                |d| d["videoroom"] == "joined",
            )
            .await
            .map_err(|e| ClientError::Protocol(format!("{e:#}")))?;
        tracing::debug!(offer = %offer_copy, answer = %e["jsep"]["sdp"], "Janus publisher negotiation");
        if let Some(id) = e["plugindata"]["data"]["id"].as_u64()
            && let Ok(mut f) = feed_out.lock()
        {
            *f = id;
        }
        e["jsep"]["sdp"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Protocol("Janus sent no answer".into()))
    })
    .await?;
    let id = *feed.lock().map_err(|_| anyhow!("poisoned"))?;
    Ok((client, id))
}

#[allow(clippy::too_many_arguments)]
async fn subscribe(
    session: &Session,
    room: u64,
    feeds: &[u64],
    m: &Member,
    recorder: Option<Arc<Recorder>>,
    pace: bool,
    bind: IpAddr,
    publisher: Option<&Client>,
) -> anyhow::Result<Option<Client>> {
    let handle = session.attach().await?;
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    let join = json!({"request": "join", "room": room, "ptype": "subscriber", "streams": streams});
    // A feed becomes subscribable a moment after its DTLS completes: retry briefly.
    let mut tries = 0;
    let e = loop {
        match session
            .message(handle, join.clone(), None, |d| d["videoroom"] == "attached")
            .await
        {
            Ok(e) => break e,
            Err(e) if tries < 20 && e.to_string().contains("No such feed") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let offer = e["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("Janus sent no subscriber offer"))?
        .to_string();
    let tracks: Vec<SubscribedTrack> = e["plugindata"]["data"]["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let kind = match s["type"].as_str()? {
                        "audio" => TrackKind::Audio,
                        "video" => TrackKind::Video,
                        _ => return None,
                    };
                    let mid = s["mid"].as_str()?.to_string();
                    let feed = s["feed_id"].as_u64()?;
                    Some(SubscribedTrack {
                        track_sid: format!("{feed}-{mid}"),
                        mid,
                        participant_sid: feed.to_string(),
                        kind,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    // A publisher receives on its own client, as a participant with one process would;
    // viewers get a receive-only client.
    let (client, answer) = match publisher {
        Some(p) => (None, p.receive_external_offer(offer, tracks).await?),
        None => {
            let mut config = client_config(String::new(), String::new(), m, recorder, pace);
            config.publish_audio = false;
            config.publish_video = false;
            config.bind_ip = bind;
            let (c, a) = Client::receive_external(config, offer, tracks).await?;
            (Some(c), a)
        }
    };
    session
        .message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
            |d| d["started"] == "ok" || d["videoroom"] == "event",
        )
        .await?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_one_address_and_keeps_videoroom() {
        let dir = std::env::temp_dir().join(format!("moien-lt-jcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let reference = dir.join("ref");
        std::fs::create_dir_all(&reference).unwrap();
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        for p in [
            "libjanus_videoroom.so",
            "libjanus_echotest.so",
            "libjanus_sip.so",
        ] {
            std::fs::write(plugins.join(p), b"").unwrap();
        }
        std::fs::write(
            reference.join("janus.jcfg"),
            format!(
                "general: {{\n\tplugins_folder = \"{}\"\t# x\n}}\n",
                plugins.display()
            ),
        )
        .unwrap();
        write_config(&dir, &reference, Ipv4Addr::new(10, 213, 1, 2), 18_088).unwrap();
        let main = std::fs::read_to_string(dir.join("janus.jcfg")).unwrap();
        assert!(
            main.contains("disable = \"libjanus_echotest.so,libjanus_sip.so\""),
            "{main}"
        );
        assert!(main.contains("interface = \"10.213.1.2\""));
        assert!(main.contains("ice_enforce_list = \"10.213.1.2\""));
        assert!(!main.contains("stun_server"));
        let http = std::fs::read_to_string(dir.join("janus.transport.http.jcfg")).unwrap();
        assert!(http.contains("port = 18088") && http.contains("ip = \"10.213.1.2\""));
        let _ = std::fs::remove_dir_all(dir);
    }
}
