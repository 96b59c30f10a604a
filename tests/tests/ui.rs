//! The web UI's server side as a browser meets it, without a browser: the
//! page and its files (security headers, ETags, no way out of the table),
//! logging in with a token (a cookie that any node accepts and that ends
//! with the token), the rules that keep a page of another site from acting
//! through the browser's credentials (Origin, CSRF), and the consoles'
//! WebSockets: refused before the upgrade where that can be known, and
//! closed with the reason when the host refuses. Every refusal leaves the
//! VM as it was. (tests/ui_browser.py drives the page itself in Chromium,
//! against real guests: tests/tests/ui_browser.rs.)

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kvmesh_tests::rest::{bearer, curl, refused, wait_token};
use kvmesh_tests::ws::websocket;
use kvmesh_tests::Cluster;

#[test]
fn the_ui_logs_in_with_a_token_and_refuses_what_another_site_would_make_a_browser_do() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let other = (leader + 1) % 3;
    let admin = c.cli_ok(0, &["token", "create", "ana", "--role", "admin"])?["token"].as_str().unwrap().to_string();
    let viewer = c.cli_ok(0, &["token", "create", "vic", "--role", "viewer"])?["token"].as_str().unwrap().to_string();
    // `web` is never restarted (its console is opened below); `spare` takes the writes.
    c.cli_ok(0, &["vm", "create", "web", "--vcpus", "1", "--memory", "64", "--wait"])?;
    c.cli_ok(0, &["vm", "create", "spare", "--vcpus", "1", "--memory", "64", "--wait"])?;
    for i in 0..3 {
        wait_token(&c, i, &admin)?;
        wait_token(&c, i, &viewer)?;
    }

    // The page and its files, over HTTP/1.1 and HTTP/2, without a credential.
    for version in ["--http1.1", "--http2"] {
        let page = curl(&c, other, "/", &[version])?;
        ensure!(page.status == 200 && page.content_type.starts_with("text/html"), "{} {}", page.status, page.body);
        ensure!(page.body.contains("/ui/app.js"), "the page loads no app: {}", page.body);
        let csp = page.header("content-security-policy").unwrap_or_default();
        ensure!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "CSP {csp:?}");
        ensure!(page.header("x-content-type-options") == Some("nosniff"), "{}", page.headers);
    }
    let app = curl(&c, other, "/ui/app.js", &[])?;
    ensure!(
        app.status == 200 && app.content_type.starts_with("text/javascript"),
        "{} {}",
        app.status,
        app.content_type
    );
    let tag = app.header("etag").context("no ETag")?.to_string();
    let again = curl(&c, other, "/ui/app.js", &["-H", &format!("If-None-Match: {tag}")])?;
    ensure!(again.status == 304 && again.body.is_empty(), "{} {}", again.status, again.body);
    let xterm = curl(&c, other, "/ui/vendor/xterm-6.0.0/xterm.mjs", &["-o", "/dev/null"])?;
    ensure!(
        xterm.status == 200 && xterm.header("cache-control").is_some_and(|v| v.contains("immutable")),
        "{}",
        xterm.headers
    );
    refused(&curl(&c, other, "/ui/../../etc/passwd", &["--path-as-is"])?, 400, "..")?;
    refused(&curl(&c, other, "/ui/vendor/../app.js", &["--path-as-is"])?, 400, "..")?;
    refused(&curl(&c, other, "/ui/nothing.js", &[])?, 404, "no file")?;

    // Logging in: a JSON body with a valid token only.
    let dir = tempfile::tempdir()?;
    let jar = dir.path().join("cookies").display().to_string();
    let login = |token: &str, jar: &str| {
        let body = format!("{{\"token\": \"{token}\"}}");
        curl(&c, other, "/ui/login", &["-X", "POST", "-H", "Content-Type: application/json", "-d", &body, "-c", jar])
    };
    refused(&login("kvm1.ana.wrong", &jar)?, 401, "not valid")?;
    let form = curl(&c, other, "/ui/login", &["-X", "POST", "-d", &format!("token={admin}")])?;
    refused(&form, 415, "JSON")?;
    let extra = curl(
        &c,
        other,
        "/ui/login",
        &["-X", "POST", "-H", "Content-Type: application/json", "-d", "{\"token\": \"x\", \"role\": \"admin\"}"],
    )?;
    refused(&extra, 400, "role")?;
    let session = login(&admin, &jar)?;
    ensure!(session.status == 200, "login: {} {}", session.status, session.body);
    let cookie = session.header("set-cookie").context("no cookie")?.to_string();
    for part in ["__Host-kvmesh_session=kvs1.ana.", "HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        ensure!(cookie.contains(part), "the cookie lacks {part}: {cookie}");
    }
    ensure!(!cookie.contains(admin.rsplit('.').next().unwrap()), "the cookie holds the token's secret");
    let s = session.json()?;
    let csrf = s["csrf"].as_str().context("no CSRF token")?.to_string();
    ensure!(s["name"] == "ana" && s["role"] == "admin", "{s}");

    // The cookie counts on every node (reads), writes need the CSRF token.
    let with_cookie =
        |i: usize, path: &str, extra: &[&str]| curl(&c, i, path, &[&["-b", jar.as_str()], extra].concat());
    for i in 0..3 {
        let vms = with_cookie(i, "/api/v1/vms", &[])?;
        ensure!(vms.status == 200 && vms.body.contains("\"web\""), "node {i}: {} {}", vms.status, vms.body);
        let me = with_cookie(i, "/ui/session", &[])?.json()?;
        ensure!(me["name"] == "ana" && me["csrf"] == csrf.as_str(), "node {i}: {me}");
    }
    refused(&with_cookie(leader, "/api/v1/vms/web/stop?force=true", &["-X", "POST"])?, 403, "CSRF")?;
    let wrong = ["-X", "POST", "-H", "X-Kvmesh-Csrf: 00"];
    refused(&with_cookie(leader, "/api/v1/vms/web/stop?force=true", &wrong)?, 403, "CSRF")?;
    ensure!(c.cli_ok(leader, &["vm", "get", "web"])?["desired"] == "running", "a refused write changed the VM");
    let header = format!("X-Kvmesh-Csrf: {csrf}");
    let restart = with_cookie(other, "/api/v1/vms/spare/restart", &["-X", "POST", "-H", &header])?;
    ensure!(restart.status == 200, "restart with the CSRF token: {} {}", restart.status, restart.body);

    // A viewer's session reads, and is refused writes by its role.
    let viewer_jar = dir.path().join("viewer").display().to_string();
    let v = login(&viewer, &viewer_jar)?.json()?;
    let v_csrf = format!("X-Kvmesh-Csrf: {}", v["csrf"].as_str().unwrap_or_default());
    let stop = curl(&c, other, "/api/v1/vms/web/stop", &["-b", &viewer_jar, "-X", "POST", "-H", &v_csrf])?;
    refused(&stop, 403, "operator role")?;

    // Another site's page: refused whatever the credential (a browser's
    // client certificate would be sent by itself, like the cookie).
    let evil = ["-X", "POST", "-H", "Origin: https://evil.example", "-H"];
    let a = curl(&c, leader, "/api/v1/vms/web/stop?force=true", &[&evil[..], &[&bearer(&admin)]].concat())?;
    refused(&a, 403, "another site")?;
    let fetch = ["-X", "POST", "-H", "Sec-Fetch-Site: cross-site", "-H"];
    refused(
        &curl(&c, leader, "/api/v1/vms/web/stop?force=true", &[&fetch[..], &[&bearer(&admin)]].concat())?,
        403,
        "another site",
    )?;
    refused(
        &curl(
            &c,
            leader,
            "/ui/login",
            &[
                "-X",
                "POST",
                "-H",
                "Origin: https://evil.example",
                "-H",
                "Content-Type: application/json",
                "-d",
                &format!("{{\"token\":\"{admin}\"}}"),
            ],
        )?,
        403,
        "another site",
    )?;
    let null = ["-X", "POST", "-H", "Origin: null", "-H"];
    refused(
        &curl(&c, leader, "/api/v1/vms/web/stop?force=true", &[&null[..], &[&bearer(&admin)]].concat())?,
        403,
        "another site",
    )?;
    // gRPC paths too: a page's no-cors POST of a gRPC frame would carry a
    // browser's client certificate.
    let grpc = curl(
        &c,
        leader,
        "/kvmesh.v1.Vms/Stop",
        &[
            "--http2",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/grpc",
            "-H",
            "TE: trailers",
            "-H",
            "Origin: https://evil.example",
            "-H",
            &bearer(&admin),
            "--data-binary",
            "",
        ],
    )?;
    ensure!(grpc.header("grpc-status") == Some("7"), "a cross-site gRPC call: {} {}", grpc.headers, grpc.body);
    ensure!(
        grpc.header("grpc-message").is_some_and(|m| m.contains("another%20site") || m.contains("another site")),
        "{}",
        grpc.headers
    );
    ensure!(c.cli_ok(leader, &["vm", "get", "web"])?["desired"] == "running", "a cross-site write changed the VM");
    let port = c.addr(leader).rsplit(':').next().unwrap().to_string();
    let same =
        ["-X", "POST", "-H", &format!("Origin: https://kvmesh-node:{port}"), "-H", "Sec-Fetch-Site: same-origin", "-H"];
    let ok = curl(&c, leader, "/api/v1/vms/spare/restart", &[&same[..], &[&bearer(&admin)]].concat())?;
    ensure!(ok.status == 200, "a same-origin write: {} {}", ok.status, ok.body);

    // The consoles as WebSockets: refused before the upgrade when the
    // answer is known (no credential, another site, no such VM, no
    // upgrade asked), else opened and closed with the host's reason.
    let ca = std::fs::read_to_string(c.nodes[other].data_dir.join("tls").join("ca.crt"))?;
    let address = format!("127.0.0.1:{}", c.addr(other).rsplit(':').next().unwrap());
    let cookie_header =
        format!("__Host-kvmesh_session={}", cookie.split(';').next().unwrap().split_once('=').unwrap().1);
    let open =
        |path: &str, headers: &[(&str, &str)]| websocket(&address, &ca, path, headers, b"", Duration::from_secs(10));
    let anonymous = open("/api/v1/vms/web/serial", &[])?;
    ensure!(anonymous.status == 401 && anonymous.refusal.contains("credential"), "{anonymous:?}");
    let foreign = open("/api/v1/vms/web/serial", &[("Cookie", &cookie_header), ("Origin", "https://evil.example")])?;
    ensure!(foreign.status == 403 && foreign.refusal.contains("another site"), "{foreign:?}");
    let ghost = open("/api/v1/vms/ghost/serial", &[("Cookie", &cookie_header)])?;
    ensure!(ghost.status == 404 && ghost.refusal.contains("ghost"), "{ghost:?}");
    refused(&with_cookie(other, "/api/v1/vms/web/serial", &["--http1.1"])?, 400, "WebSocket")?;
    let origin = format!("https://kvmesh-node:{}", c.addr(other).rsplit(':').next().unwrap());
    // libvirt's test driver runs no guest: the host refuses, after the upgrade.
    let serial = open("/api/v1/vms/web/serial", &[("Cookie", &cookie_header), ("Origin", &origin)])?;
    ensure!(serial.status == 101, "{serial:?}");
    let (code, reason) = serial.close.clone().context("the socket was not closed with a reason")?;
    ensure!(code == 4009 && reason.contains("no serial console"), "{serial:?}");
    let vnc = open("/api/v1/vms/web/vnc", &[("Authorization", &bearer(&admin)["Authorization: ".len()..])])?;
    ensure!(vnc.status == 101 && vnc.close.as_ref().is_some_and(|(code, _)| *code >= 4000), "{vnc:?}");

    // Revoking the token ends its sessions on every node; logging out
    // makes the browser forget the cookie.
    c.cli_ok(0, &["token", "revoke", "vic"])?;
    kvmesh_tests::wait_for("the viewer's session ended everywhere", Duration::from_secs(10), || {
        (0..3).all(|i| curl(&c, i, "/api/v1/vms", &["-b", &viewer_jar]).is_ok_and(|a| a.status == 401)).then_some(())
    })?;
    refused(&curl(&c, other, "/ui/session", &["-b", &viewer_jar])?, 401, "log in")?;
    let out = with_cookie(other, "/ui/logout", &["-X", "POST", "-H", &header])?;
    ensure!(out.status == 204 && out.header("set-cookie").is_some_and(|v| v.contains("Max-Age=0")), "{}", out.headers);
    Ok(())
}

#[test]
fn an_insecure_node_answers_only_requests_for_the_loopback() -> Result<()> {
    // Everyone is an admin there: a page of another site that rebinds its
    // own name to 127.0.0.1 (so its Origin equals its Host) must get nothing.
    let c = Cluster::three_insecure()?;
    let port = c.addr(0).rsplit(':').next().unwrap().to_string();
    let get = |host: &str| -> Result<(String, String)> {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "-H", &format!("Host: {host}")])
            .arg(format!("http://127.0.0.1:{port}/api/v1/vms"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("no status")?;
        Ok((code.to_string(), body.to_string()))
    };
    let (code, body) = get(&format!("evil.example:{port}"))?;
    ensure!(code == "403" && body.contains("loopback only"), "{code} {body}");
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (code, body) = get(&host)?;
        ensure!(code == "200", "Host {host}: {code} {body}");
    }
    Ok(())
}
