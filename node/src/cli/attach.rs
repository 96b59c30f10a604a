//! `vm console` (interactive) and `vm vnc`: sessions with a running guest
//! through whichever node the CLI talks to (`Vms/Attach`).
//!
//! On a terminal, `vm console` puts it in raw mode, so every key reaches
//! the guest, and `Ctrl-]` leaves (as in `virsh console` and telnet). With a
//! stdin that is not a terminal it sends what stdin holds, and after stdin
//! ends prints what the guest sends for `--linger` more seconds: scripts
//! pipe commands in. (A fixed time, not "until the guest is quiet": many
//! guests print all the time.) `vm vnc` listens on a
//! local TCP port and carries each VNC viewer's connection to the guest's
//! display.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{anyhow, Result};
use kvmesh_proto as pb;
use pb::vms_client::VmsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::client::{status_err, Ch};

/// The byte `Ctrl-]` sends.
const CTRL_RIGHT_BRACKET: u8 = 0x1d;

/// Opens a session: sends the open frame, returns the sender for the
/// client's bytes, the guest's frames and the host's name.
async fn open(
    channel: &Ch,
    vm: &str,
    kind: pb::AttachKind,
    force: bool,
) -> Result<(mpsc::Sender<pb::AttachFrame>, Streaming<pb::AttachFrame>, String)> {
    let (tx, rx) = mpsc::channel(16);
    let open = pb::AttachOpen { vm: vm.to_string(), kind: kind as i32, force };
    tx.send(pb::AttachFrame { open: Some(open), ..Default::default() }).await?;
    let mut down =
        VmsClient::new(channel.clone()).attach(ReceiverStream::new(rx)).await.map_err(status_err)?.into_inner();
    // The host names itself first; an error (a stopped VM, a busy console)
    // comes instead.
    let host = match tokio::time::timeout(Duration::from_secs(30), down.message()).await {
        Ok(Ok(Some(frame))) => frame.host.unwrap_or_default(),
        Ok(Ok(None)) => return Err(anyhow!("the session to {vm} ended before it began")),
        Ok(Err(s)) => return Err(status_err(s)),
        Err(_) => return Err(anyhow!("the host of {vm} did not open the session within 30 s")),
    };
    Ok((tx, down, host))
}

/// `vm console NAME`: an interactive session with the serial console.
pub async fn console(channel: Ch, vm: String, linger: Duration, force: bool) -> Result<()> {
    let (tx, mut down, host) = open(&channel, &vm, pb::AttachKind::Serial, force).await?;
    let tty = std::io::stdin().is_terminal();
    let _raw = if tty {
        eprintln!("Connected to {vm}'s serial console on {host}. Ctrl-] leaves.\r");
        Some(RawMode::enter()?)
    } else {
        None
    };
    // Stdin is read on its own thread: a blocking read cannot be cancelled,
    // and the process ends when the session does.
    let (done_tx, mut stdin_done) = mpsc::channel::<bool>(1);
    // The session lasts while `tx` lives, also after stdin ends.
    let input = tx.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        let left = loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break false,
                Ok(n) => n,
            };
            let (data, leave) = match buf[..n].iter().position(|b| tty && *b == CTRL_RIGHT_BRACKET) {
                Some(at) => (&buf[..at], true),
                None => (&buf[..n], false),
            };
            if !data.is_empty()
                && input.blocking_send(pb::AttachFrame { data: data.to_vec(), ..Default::default() }).is_err()
            {
                break false;
            }
            if leave {
                break true;
            }
        };
        let _ = done_tx.blocking_send(left);
    });
    let mut stdout = std::io::stdout();
    let mut ends_at: Option<tokio::time::Instant> = None;
    // A hang-up or a kill ends the session like Ctrl-]: the terminal gets
    // its settings back (RawMode's drop).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let next = if let Some(at) = ends_at {
            // Input is over: print what comes for `linger`.
            match tokio::time::timeout_at(at, down.message()).await {
                Ok(m) => m,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                m = down.message() => m,
                _ = hangup.recv() => break,
                _ = term.recv() => break,
                left = stdin_done.recv() => {
                    if left.unwrap_or(false) || tty {
                        break;
                    }
                    ends_at = Some(tokio::time::Instant::now() + linger);
                    continue;
                }
            }
        };
        match next {
            Ok(Some(frame)) => {
                // A reader that went away (`| head`) ends the session quietly.
                if stdout.write_all(&frame.data).and_then(|_| stdout.flush()).is_err() {
                    break;
                }
            }
            Ok(None) => {
                if tty {
                    eprintln!("\r\nThe session ended (the guest stopped or moved).\r");
                }
                break;
            }
            Err(s) => return Err(status_err(s)),
        }
    }
    if tty {
        eprintln!("\r");
    }
    drop(tx);
    Ok(())
}

/// `vm vnc NAME`: a local port that carries VNC viewers to the guest's display.
pub async fn vnc(channel: Ch, vm: String, listen: String, once: bool) -> Result<()> {
    // Fail early, with the server's reason, if the VM has no display.
    let (probe, _, host) = open(&channel, &vm, pb::AttachKind::Vnc, false).await?;
    drop(probe);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow!("cannot listen on {listen}: {e} (choose another with --listen ADDR:PORT)"))?;
    let at = listener.local_addr()?;
    println!(
        "VNC display of {vm} (on {host}): connect a VNC viewer to {at}, for example `vncviewer {}::{}`",
        at.ip(),
        at.port()
    );
    println!("The port is open to this machine only unless --listen says otherwise; Ctrl-C ends.");
    std::io::stdout().flush()?;
    loop {
        let (tcp, peer) = listener.accept().await?;
        let (channel, vm) = (channel.clone(), vm.clone());
        let session = async move {
            if let Err(e) = carry(channel, &vm, tcp).await {
                eprintln!("viewer {peer}: {e}");
            }
        };
        if once {
            session.await;
            return Ok(());
        }
        tokio::spawn(session);
    }
}

/// One viewer's connection, carried over one session.
async fn carry(channel: Ch, vm: &str, tcp: tokio::net::TcpStream) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let (tx, mut down, _) = open(&channel, vm, pb::AttachKind::Vnc, false).await?;
    let (mut rd, mut wr) = tcp.into_split();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(pb::AttachFrame { data: buf[..n].to_vec(), ..Default::default() }).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let down = async move {
        while let Ok(Some(frame)) = down.message().await {
            if wr.write_all(&frame.data).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}

/// A terminal in raw mode until dropped.
struct RawMode(libc::termios);

impl RawMode {
    fn enter() -> Result<Self> {
        // SAFETY: stdin is open; termios is a plain C struct filled in by
        // tcgetattr before it is read.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return Err(anyhow!("cannot read the terminal's settings: {}", std::io::Error::last_os_error()));
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw);
            Ok(RawMode(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}
