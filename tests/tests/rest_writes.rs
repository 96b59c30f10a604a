//! Writing through REST as a Terraform provider or a script would: a VM
//! made and then confirmed by the same idempotent PUT, changed in place,
//! refused when a fixed field differs; ETags that make reads cheap and
//! writes safe; bad bodies refused naming the field; networks, storage
//! and tokens by PUT/POST and DELETE; an image uploaded as the request
//! body; policy, capacity, balance and the scheduler's explanation. Every
//! refusal leaves the state as it was.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kvmesh_tests::rest::{bearer, curl, refused, wait_token, Answer};
use kvmesh_tests::Cluster;
use serde_json::{json, Value};

/// A JSON request with `method` as `token`.
fn send(c: &Cluster, i: usize, method: &str, path: &str, token: &str, body: &Value) -> Result<Answer> {
    let body = body.to_string();
    curl(c, i, path, &["-X", method, "-H", &bearer(token), "-H", "Content-Type: application/json", "-d", &body])
}

fn get(c: &Cluster, i: usize, path: &str, token: &str) -> Result<Answer> {
    curl(c, i, path, &["-H", &bearer(token)])
}

/// The events about `vm`, by message.
fn events_about(c: &Cluster, i: usize, token: &str, vm: &str) -> Result<Vec<String>> {
    let all = get(c, i, "/api/v1/events", token)?.json()?;
    let about = all.as_array().context("events")?.iter().filter(|e| e["subject"]["name"] == vm);
    Ok(about.map(|e| e["message"].as_str().unwrap_or_default().to_string()).collect())
}

#[test]
fn rest_writes_are_idempotent_puts_with_etags_and_named_refusals() -> Result<()> {
    let mut c = Cluster::three()?;
    let leader = c.leader()?;
    let f = (leader + 1) % 3;
    let admin = c.cli_ok(0, &["token", "create", "tf", "--role", "admin"])?["token"].as_str().unwrap().to_string();
    wait_token(&c, f, &admin)?;

    // A VM made by PUT (201, its location and ETag), through a follower.
    let spec = json!({"vcpus": 1, "memory_mib": 128, "labels": {"app": "shop"}, "description": "front end"});
    let made = send(&c, f, "PUT", "/api/v1/vms/web", &admin, &spec)?;
    ensure!(made.status == 201, "create: {} {}", made.status, made.body);
    ensure!(made.header("location") == Some("/api/v1/vms/web"), "{}", made.headers);
    ensure!(made.header("etag").is_some_and(|e| e.starts_with('"')), "{}", made.headers);
    let vm = made.json()?;
    ensure!(vm["hardware"]["firmware"] == "bios" && vm["hardware"]["machine"] == "pc", "defaults explicit: {vm}");
    c.wait_vm_state(leader, "web", "running", Duration::from_secs(30))?;

    // The same PUT again changes nothing: 200, no new event about it.
    let before = events_about(&c, leader, &admin, "web")?;
    let again = send(&c, f, "PUT", "/api/v1/vms/web", &admin, &spec)?;
    ensure!(again.status == 200, "again: {} {}", again.status, again.body);
    ensure!(made.header("x-kvmesh-changed") == Some("true"), "{}", made.headers);
    ensure!(again.header("x-kvmesh-changed") == Some("false"), "the same PUT wrote: {}", again.headers);
    ensure!(events_about(&c, leader, &admin, "web")? == before, "a second identical PUT wrote something");

    // Reads are cheap to repeat: If-None-Match with the ETag is a 304.
    let read = get(&c, leader, "/api/v1/vms/web", &admin)?;
    let tag = read.header("etag").context("no ETag")?.to_string();
    let cached = curl(&c, leader, "/api/v1/vms/web", &["-H", &bearer(&admin), "-H", &format!("If-None-Match: {tag}")])?;
    ensure!(cached.status == 304 && cached.body.is_empty(), "{} {}", cached.status, cached.body);
    // A write with a stale If-Match is refused (412) and writes nothing.
    let changed = json!({"vcpus": 1, "memory_mib": 128, "labels": {"app": "shop"}, "description": "checkout"});
    let stale = changed.to_string();
    let a = curl(
        &c,
        f,
        "/api/v1/vms/web",
        &[
            "-X",
            "PUT",
            "-H",
            &bearer(&admin),
            "-H",
            "Content-Type: application/json",
            "-H",
            "If-Match: \"0000\"",
            "-d",
            &stale,
        ],
    )?;
    refused(&a, 412, "If-Match")?;
    ensure!(c.vm(leader, "web")?["description"] == "front end", "a refused write changed the VM");
    // With the current ETag it goes through; labels are replaced, not merged.
    let current = get(&c, leader, "/api/v1/vms/web", &admin)?.header("etag").context("etag")?.to_string();
    let changed = json!({"vcpus": 1, "memory_mib": 128, "labels": {"tier": "web"}, "description": "checkout"});
    let a = curl(
        &c,
        f,
        "/api/v1/vms/web",
        &[
            "-X",
            "PUT",
            "-H",
            &bearer(&admin),
            "-H",
            "Content-Type: application/json",
            "-H",
            &format!("If-Match: {current}"),
            "-d",
            &changed.to_string(),
        ],
    )?;
    ensure!(a.status == 200, "{} {}", a.status, a.body);
    let vm = c.vm(leader, "web")?;
    ensure!(vm["description"] == "checkout" && vm["labels"] == json!({"tier": "web"}), "{vm}");

    // A cloud-init seed: the same seed again writes nothing; dropping its
    // user-data removes it (an update alone only sets parts).
    let seeded = json!({"vcpus": 1, "memory_mib": 64, "cpu_model": "", "cloud_init":
        {"user_data": "#cloud-config\n", "ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK k@h"]}});
    let a = send(&c, f, "PUT", "/api/v1/vms/seeded", &admin, &seeded)?;
    ensure!(a.status == 201 && a.json()?["cloud_init"]["user_data_bytes"] == 14, "{} {}", a.status, a.body);
    let a = send(&c, f, "PUT", "/api/v1/vms/seeded", &admin, &seeded)?;
    ensure!(a.status == 200 && a.header("x-kvmesh-changed") == Some("false"), "{} {} {}", a.status, a.headers, a.body);
    let keys_only = json!({"vcpus": 1, "memory_mib": 64, "cloud_init":
        {"ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK k@h"]}});
    let a = send(&c, f, "PUT", "/api/v1/vms/seeded", &admin, &keys_only)?;
    ensure!(a.status == 200 && a.header("x-kvmesh-changed") == Some("true"), "{} {}", a.status, a.body);
    let seed = &a.json()?["cloud_init"];
    ensure!(seed["user_data_bytes"] == 0 && seed["ssh_keys"].as_array().map(Vec::len) == Some(1), "{seed}");
    let a = send(&c, f, "PUT", "/api/v1/vms/seeded", &admin, &keys_only)?;
    ensure!(a.header("x-kvmesh-changed") == Some("false"), "the same seed again wrote: {}", a.body);
    ensure!(curl(&c, f, "/api/v1/vms/seeded", &["-X", "DELETE", "-H", &bearer(&admin)])?.status == 202);

    // What cannot change in place is refused by name, and nothing changes.
    let with_image = json!({"vcpus": 1, "memory_mib": 128, "image": "debian"});
    refused(
        &send(&c, f, "PUT", "/api/v1/vms/web", &admin, &with_image)?,
        400,
        "image of VM web cannot change in place",
    )?;
    let with_disk = json!({"vcpus": 2, "memory_mib": 128, "disks": [{"size_bytes": 1048576}]});
    refused(&send(&c, f, "PUT", "/api/v1/vms/web", &admin, &with_disk)?, 400, "disks of VM web")?;
    ensure!(c.vm(leader, "web")?["vcpus"] == 1, "a refused PUT changed the VM");

    // Bad bodies: each refusal names what was wrong.
    refused(
        &send(&c, f, "PUT", "/api/v1/vms/web", &admin, &json!({"vcpus": 1, "memory_mib": 1, "cpus": 2}))?,
        400,
        "unknown field `cpus`",
    )?;
    refused(
        &send(&c, f, "PUT", "/api/v1/vms/web", &admin, &json!({"vcpus": "two", "memory_mib": 1}))?,
        400,
        "vcpus: invalid type",
    )?;
    refused(
        &send(&c, f, "PUT", "/api/v1/vms/web", &admin, &json!({"vcpus": 1, "memory_mib": 1, "nics": [{"net": "x"}]}))?,
        400,
        "nics[0]",
    )?;
    refused(
        &send(&c, f, "PUT", "/api/v1/vms/web", &admin, &json!({"vcpus": 1, "memory_mib": 1, "firmware": "efi"}))?,
        400,
        "unknown variant `efi`",
    )?;
    let broken = curl(
        &c,
        f,
        "/api/v1/vms/web",
        &["-X", "PUT", "-H", &bearer(&admin), "-H", "Content-Type: application/json", "-d", "{\"vcpus\": 1,"],
    )?;
    refused(&broken, 400, "bad JSON body")?;
    let form = curl(&c, f, "/api/v1/vms/web", &["-X", "PUT", "-H", &bearer(&admin), "-d", "vcpus=1"])?;
    refused(&form, 400, "Content-Type: application/json")?;
    let huge = std::env::temp_dir().join(format!("kvmesh-huge-{}.json", std::process::id()));
    std::fs::write(&huge, format!("{{\"description\": \"{}\"}}", "x".repeat(3 << 20)))?;
    for version in ["--http1.1", "--http2"] {
        let a = curl(
            &c,
            f,
            "/api/v1/vms/web",
            &[
                version,
                "-X",
                "PUT",
                "-H",
                &bearer(&admin),
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &format!("@{}", huge.display()),
            ],
        )?;
        refused(&a, 413, "larger than")?;
    }
    std::fs::remove_file(&huge).ok();
    ensure!(c.vm(leader, "web")?["description"] == "checkout", "a refused body changed the VM");

    // Explain a spec before making it; a dry-run migration says where.
    let e = send(&c, f, "POST", "/api/v1/vms/db/explain", &admin, &json!({"vcpus": 1, "memory_mib": 64}))?;
    ensure!(e.status == 200 && e.json()?["chosen"].is_string(), "{} {}", e.status, e.body);
    ensure!(c.cli(leader, &["vm", "get", "db"]).code != Some(0), "explain made a VM");
    let m = send(&c, f, "POST", "/api/v1/vms/web/migrate", &admin, &json!({"dry_run": true}))?;
    ensure!(m.status == 200 && m.json()?["explanation"]["nodes"].is_array(), "{} {}", m.status, m.body);

    networks_storage_images(&c, f, &admin)?;
    cluster_and_tokens(&c, leader, f, &admin)?;

    // DELETE answers 202; the VM is gone once GET says 404.
    let d = curl(&c, f, "/api/v1/vms/web", &["-X", "DELETE", "-H", &bearer(&admin)])?;
    ensure!(d.status == 202, "{} {}", d.status, d.body);
    kvmesh_tests::wait_for("the VM gone", Duration::from_secs(30), || {
        get(&c, leader, "/api/v1/vms/web", &admin).ok().filter(|a| a.status == 404)
    })?;
    Ok(())
}

/// Networks and storage by idempotent PUT; an image uploaded as the body.
fn networks_storage_images(c: &Cluster, f: usize, admin: &str) -> Result<()> {
    let lan = json!({"kind": "isolated"});
    let a = send(c, f, "PUT", "/api/v1/networks/lan", admin, &lan)?;
    ensure!(a.status == 201 && a.json()?["kind"] == "isolated", "{} {}", a.status, a.body);
    ensure!(send(c, f, "PUT", "/api/v1/networks/lan", admin, &lan)?.status == 200, "the same network again");
    refused(
        &send(c, f, "PUT", "/api/v1/networks/lan", admin, &json!({"kind": "vxlan", "vni": 7}))?,
        409,
        "cannot change in place",
    )?;
    refused(
        &send(c, f, "PUT", "/api/v1/networks/lan", admin, &json!({"kind": "wifi"}))?,
        400,
        "unknown variant `wifi`",
    )?;
    ensure!(curl(c, f, "/api/v1/networks/lan", &["-X", "DELETE", "-H", &bearer(admin)])?.status == 204);
    let gone = kvmesh_tests::wait_for("the network gone", Duration::from_secs(10), || {
        get(c, f, "/api/v1/networks/lan", admin).ok().filter(|a| a.status == 404)
    })?;
    refused(&gone, 404, "lan")?;

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let shared = json!({"kind": "shared-dir", "path": dir.display().to_string()});
    let a = send(c, f, "PUT", "/api/v1/storage/pool", admin, &shared)?;
    ensure!(a.status == 201 && a.json()?["shared"] == true, "{} {}", a.status, a.body);
    ensure!(send(c, f, "PUT", "/api/v1/storage/pool", admin, &shared)?.status == 200, "the same storage again");
    kvmesh_tests::wait_storage_active(&c.addr(f), "pool", 3)?;

    // Upload: the body is the file; what arrives is what was sent.
    let file = dir.join("upload.img");
    let bytes: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes)?;
    let up = curl(
        c,
        f,
        "/api/v1/images/blank?storage=pool",
        &[
            "-X",
            "PUT",
            "-H",
            &bearer(admin),
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
        ],
    )?;
    ensure!(up.status == 201, "upload: {} {}", up.status, up.body);
    let image = up.json()?;
    let sha = sha256_hex(&bytes);
    ensure!(image["sha256"] == sha && image["format"] == "raw", "{image} (sent sha256 {sha})");
    let stored = kvmesh_tests::wait_for("the image readable", Duration::from_secs(10), || {
        get(c, f, "/api/v1/images/blank", admin).ok().filter(|a| a.status == 200)
    })?;
    ensure!(stored.json()?["file_bytes"] == bytes.len(), "size: {}", stored.body);
    refused(
        &curl(c, f, "/api/v1/images/other", &["-X", "PUT", "-H", &bearer(admin), "--data-binary", "abc"])?,
        400,
        "storage",
    )?;
    refused(
        &curl(c, f, "/api/v1/images/blank?storage=pool", &["-X", "PUT", "-H", &bearer(admin), "--data-binary", "abc"])?,
        409,
        "blank",
    )?;
    ensure!(curl(c, f, "/api/v1/images/blank", &["-X", "DELETE", "-H", &bearer(admin)])?.status == 204, "delete image");
    refused(
        &curl(
            c,
            f,
            "/api/v1/storage/pool",
            &[
                "-X",
                "PUT",
                "-H",
                &bearer(admin),
                "-H",
                "Content-Type: application/json",
                "-d",
                "{\"kind\": \"local\", \"path\": \"/var/tmp\"}",
            ],
        )?,
        409,
        "kind",
    )?;
    kvmesh_tests::wait_for("the storage removable", Duration::from_secs(30), || {
        curl(c, f, "/api/v1/storage/pool", &["-X", "DELETE", "-H", &bearer(admin)]).ok().filter(|a| a.status == 204)
    })?;
    Ok(())
}

/// Policy, capacity and balance; tokens made, used and revoked.
fn cluster_and_tokens(c: &Cluster, leader: usize, f: usize, admin: &str) -> Result<()> {
    let p = send(c, f, "PUT", "/api/v1/cluster/policy", admin, &json!({"policy": "pack"}))?;
    ensure!(p.status == 200 && p.json()?["policy"] == "pack", "{} {}", p.status, p.body);
    ensure!(get(c, leader, "/api/v1/cluster/policy", admin)?.json()?["policy"] == "pack");
    ensure!(get(c, f, "/api/v1/cluster/capacity", admin)?.json()?["hosts"].is_array());
    let b = curl(c, f, "/api/v1/cluster/balance", &["-X", "POST", "-H", &bearer(admin)])?;
    ensure!(b.status == 200 && b.json()?.is_array(), "balance without a body: {} {}", b.status, b.body);

    let t = send(c, f, "POST", "/api/v1/tokens", admin, &json!({"name": "reader", "role": "viewer"}))?;
    ensure!(t.status == 201, "{} {}", t.status, t.body);
    ensure!(t.header("cache-control") == Some("no-store"), "{}", t.headers);
    let reader = t.json()?["token"].as_str().context("the secret")?.to_string();
    wait_token(c, f, &reader)?;
    refused(&send(c, f, "PUT", "/api/v1/cluster/policy", &reader, &json!({"policy": "spread"}))?, 403, "admin")?;
    let listed = get(c, f, "/api/v1/tokens", admin)?.json()?;
    ensure!(
        listed.as_array().is_some_and(|t| t.iter().any(|t| t["name"] == "reader" && t.get("token").is_none())),
        "{listed}"
    );
    ensure!(curl(c, f, "/api/v1/tokens/reader", &["-X", "DELETE", "-H", &bearer(admin)])?.status == 204);
    kvmesh_tests::wait_for("the revoked token refused", Duration::from_secs(10), || {
        get(c, f, "/api/v1/vms", &reader).ok().filter(|a| a.status == 401)
    })?;
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            std::io::Write::write_all(p.stdin.as_mut().expect("stdin"), bytes)?;
            p.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}
