//! `netd demo`: the README walkthrough, for real, in throwaway namespaces.
//! A "host" namespace runs the daemon with the eBPF datapath (its uplink
//! eth0 198.18.0.2), an "outside" namespace plays the world (198.18.0.1).
//! Then it shows the programs at work: TCX links, no iptables rule, and
//! `netd stats`.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::testbed::{self, HOST_IP, HOST_IP6, OUTSIDE_IP, OUTSIDE_IP6, Testbed, UPLINK};

struct Demo {
    me: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    tb: Testbed,
}

impl Demo {
    /// Runs `netd ARGS` against the demo daemon, printing it as a user
    /// would type it, and its output.
    fn netd(&self, args: &[&str]) -> Result<String> {
        println!("$ netd {}", args.join(" "));
        let out = Command::new(&self.me)
            .arg("-H")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("netd {args:?} failed");
        }
        Ok(text)
    }

    fn ip_of(&self, name: &str) -> Result<String> {
        let out = Command::new(&self.me)
            .arg("-H")
            .arg(&self.socket)
            .args(["inspect", name])
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v[0]["NetworkSettings"]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    fn serve(&self, name: &str, port: u16) -> Result<()> {
        self.serve_on(name, &format!("0.0.0.0:{port}"))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
        let _ = nix::mount::umount2(&self.dir.join("bpffs"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn section(t: &str) {
    println!("\n== {t}");
}

pub fn run() -> Result<()> {
    if !testbed::is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    let me = std::env::current_exe()?;
    let tb = Testbed::new("demo")?;
    let dir = std::env::temp_dir().join(format!("{}-d", tb.stem));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("netd.sock");
    section("a throwaway host (netd runs here) and an outside world");
    println!(
        "host    {}  uplink {UPLINK} {HOST_IP}/24",
        tb.host.path().display()
    );
    println!("outside {}  {OUTSIDE_IP}/24", tb.outside.path().display());
    tb.uplink6()?;
    println!("        IPv6: host {HOST_IP6}/64, outside {OUTSIDE_IP6}/64");
    let daemon = Command::new(&me)
        .arg("-H")
        .arg(&socket)
        .arg("daemon")
        .arg("--netns")
        .arg(tb.host.path())
        .args(["--datapath", "ebpf", "--cleanup-on-exit"])
        // Upstream resolver: the outside world, never the machine's own.
        .arg("--dns")
        .arg(OUTSIDE_IP.to_string())
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--exec-root")
        .arg(dir.join("run"))
        .arg("--bpffs")
        .arg(dir.join("bpffs"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the daemon")?;
    let mut d = Demo {
        me,
        dir,
        socket,
        daemon: Some(daemon),
        tb,
    };
    if !testbed::wait_until(Duration::from_secs(20), || d.socket.exists()) {
        bail!("the daemon did not start");
    }
    d.walkthrough()?;
    d.ipv6()?;
    d.datapath_view()?;
    // Containers of the demo go with the daemon (--cleanup-on-exit) and
    // the namespaces with the testbed.
    drop(d);
    println!("\n== done; every namespace, link and rule the demo made is gone");
    Ok(())
}

impl Demo {
    fn walkthrough(&mut self) -> Result<()> {
        section("networks: the default bridge, host and none");
        self.netd(&["network", "ls"])?;

        section("bridge mode (default): a container with a published port");
        self.netd(&[
            "run", "-d", "--name", "web", "-p", "8080:80", "--", "sleep", "infinity",
        ])?;
        self.serve("web", 80)?;
        self.netd(&["exec", "web", "--", "ip", "-br", "addr", "show", "eth0"])?;
        self.netd(&["port", "web"])?;
        self.netd(&["run", "-d", "--name", "tomcat01", "--", "sleep", "infinity"])?;
        let web = self.ip_of("web")?;
        self.netd(&[
            "exec", "tomcat01", "--", "ping", "-c", "2", "-i", "0.2", &web,
        ])?;
        section(&format!(
            "from the outside world: curl http://{HOST_IP}:8080/ (published port, DNAT)"
        ));
        testbed::wait_until(Duration::from_secs(5), || {
            self.tb
                .exec(
                    &self.tb.outside,
                    &["curl", "-s", "-m", "1", &format!("http://{HOST_IP}:8080/")],
                )
                .is_ok_and(|o| o.status.success())
        });
        println!("outside$ curl http://{HOST_IP}:8080/");
        print!(
            "{}",
            self.tb.ok(
                &self.tb.outside,
                &["curl", "-s", "-m", "3", &format!("http://{HOST_IP}:8080/")]
            )?
        );
        println!("  (the server sees the client's own address: DNAT, no proxy)");

        section("egress: masquerade to the uplink address");
        let me = self.me.to_string_lossy().into_owned();
        self.tb.spawn(
            &self.tb.outside.clone(),
            &[&me, "tool", "http-serve", "0.0.0.0:8000", "--name", "world"],
        )?;
        testbed::wait_until(Duration::from_secs(5), || {
            self.tb
                .exec(
                    &self.tb.outside,
                    &["curl", "-s", "-m", "1", "http://127.0.0.1:8000/"],
                )
                .is_ok_and(|o| o.status.success())
        });
        self.egress_curl()?;
        println!("  (the world sees the host's uplink address {HOST_IP})");

        section("host mode: the host's own interfaces");
        self.netd(&[
            "run",
            "--rm",
            "--network",
            "host",
            "--",
            "ip",
            "-br",
            "-4",
            "addr",
        ])?;
        section("none mode: only lo");
        self.netd(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--",
            "ip",
            "-br",
            "link",
        ])?;
        section("container mode: share web's namespace, talk over lo");
        self.netd(&[
            "run",
            "--rm",
            "--network",
            "container:web",
            "--",
            "curl",
            "-s",
            "-m",
            "3",
            "http://127.0.0.1:80/",
        ])?;

        section("a user-defined network");
        self.netd(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            "192.168.0.0/16",
            "--gateway",
            "192.168.0.1",
            "mynet",
        ])?;
        self.netd(&[
            "run",
            "-d",
            "--name",
            "tomcat02",
            "--network",
            "mynet",
            "--",
            "sleep",
            "infinity",
        ])?;
        let t2 = self.ip_of("tomcat02")?;
        section("name resolution on mynet: its embedded DNS server (the gateway, port 53)");
        self.netd(&[
            "run",
            "-d",
            "--name",
            "tomcat03",
            "--network",
            "mynet",
            "--network-alias",
            "db",
            "--",
            "sleep",
            "infinity",
        ])?;
        self.netd(&["exec", "tomcat03", "--", "cat", "/etc/resolv.conf"])?;
        self.netd(&[
            "exec", "tomcat03", "--", "ping", "-c", "2", "-i", "0.2", "tomcat02",
        ])?;
        self.netd(&[
            "exec",
            "tomcat02",
            "--",
            "getent",
            "hosts",
            "db",
            "tomcat03.mynet",
        ])?;
        println!(
            "(tomcat01 on the default bridge cannot reach tomcat02 on mynet, nor resolve it:)"
        );
        for target in [t2.as_str(), "tomcat02"] {
            let blocked = Command::new(&self.me)
                .arg("-H")
                .arg(&self.socket)
                .args([
                    "exec", "tomcat01", "--", "ping", "-c", "1", "-W", "1", target,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            println!(
                "$ netd exec tomcat01 -- ping -c 1 {target}   -> {}",
                match (blocked.success(), target == t2) {
                    (true, _) => "reached (unexpected)",
                    (false, true) => "no reply (isolated)",
                    (false, false) => "unknown name (no DNS on the default bridge)",
                }
            );
        }
        self.netd(&["network", "connect", "mynet", "tomcat01"])?;
        self.netd(&["exec", "tomcat01", "--", "ip", "-br", "-4", "addr"])?;
        self.netd(&["exec", "tomcat01", "--", "ping", "-c", "1", "tomcat02"])?;
        section("the default bridge: --link NAME:ALIAS writes /etc/hosts, one way");
        self.netd(&[
            "run", "--rm", "--link", "web:www", "--", "ping", "-c", "1", "www",
        ])?;
        self.netd(&["ps"])?;
        section("docker-style inspect (excerpt)");
        let v: serde_json::Value =
            serde_json::from_str(&self.netd_quiet(&["network", "inspect", "mynet"])?)?;
        println!("{}", serde_json::to_string_pretty(&v[0]["IPAM"])?);
        println!("{}", serde_json::to_string_pretty(&v[0]["Containers"])?);
        println!("{}", serde_json::to_string_pretty(&v[0]["DNS"])?);
        Ok(())
    }

    /// The README's IPv6 lines: a dual-stack network (AAAA, a published
    /// port over IPv6 from outside, NAT66 out) and an IPv6-only one.
    fn ipv6(&mut self) -> Result<()> {
        section("IPv6: a dual-stack network");
        self.netd(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "10.66.0.0/24",
            "--subnet",
            "fd00:66::/64",
            "v6net",
        ])?;
        self.netd(&[
            "run",
            "-d",
            "--name",
            "web6",
            "--network",
            "v6net",
            "-p",
            "8081:80",
            "--",
            "sleep",
            "infinity",
        ])?;
        self.netd(&[
            "run",
            "-d",
            "--name",
            "c6",
            "--network",
            "v6net",
            "--",
            "sleep",
            "infinity",
        ])?;
        self.serve_on("web6", "[::]:80")?;
        self.netd(&["port", "web6"])?;
        self.netd(&["exec", "c6", "--", "ping", "-6", "-c", "1", "web6"])?;
        let url = format!("http://[{HOST_IP6}]:8081/");
        self.outside_curl(&url)?;
        println!("  (DNAT to fd00:66::2 over IPv6; the server sees the client's own address)");
        let me = self.me.to_string_lossy().into_owned();
        self.tb.spawn(
            &self.tb.outside.clone(),
            &[
                &me,
                "tool",
                "http-serve",
                &format!("[{OUTSIDE_IP6}]:8000"),
                "--name",
                "world6",
            ],
        )?;
        let world = format!("http://[{OUTSIDE_IP6}]:8000/");
        testbed::wait_until(Duration::from_secs(5), || {
            self.tb
                .exec(&self.tb.outside, &["curl", "-g", "-s", "-m", "1", &world])
                .is_ok_and(|o| o.status.success())
        });
        self.netd(&["exec", "web6", "--", "curl", "-g", "-s", "-m", "3", &world])?;
        println!("  (NAT66: the world sees the host's uplink address {HOST_IP6})");

        section("IPv6-only: --ipv4=false");
        self.netd(&[
            "network",
            "create",
            "--ipv6",
            "--ipv4=false",
            "--subnet",
            "fd00:70::/64",
            "v6only",
        ])?;
        for name in ["a6", "b6"] {
            self.netd(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "v6only",
                "--",
                "sleep",
                "infinity",
            ])?;
        }
        self.serve_on("a6", "[::]:80")?;
        self.netd(&[
            "exec", "b6", "--", "ip", "-br", "addr", "show", "dev", "eth0",
        ])?;
        self.netd(&["exec", "b6", "--", "cat", "/etc/resolv.conf"])?;
        testbed::wait_until(Duration::from_secs(5), || {
            self.netd_quiet(&["exec", "b6", "--", "curl", "-s", "-m", "1", "http://a6/"])
                .is_ok_and(|o| o.contains("hello"))
        });
        self.netd(&["exec", "b6", "--", "curl", "-s", "-m", "3", "http://a6/"])?;
        println!("  (AAAA from v6only's DNS server on fd00:70::1; no IPv4 anywhere)");
        Ok(())
    }

    /// An HTTP server (reports its client) in container `name` on `listen`.
    fn serve_on(&self, name: &str, listen: &str) -> Result<()> {
        let cmd = format!(
            "{} tool http-serve {listen} --name {name} >/dev/null 2>&1 &",
            self.me.display()
        );
        Command::new(&self.me)
            .arg("-H")
            .arg(&self.socket)
            .args(["exec", name, "--", "sh", "-c", &cmd])
            .status()?;
        Ok(())
    }

    /// `curl URL` from the outside namespace, once it answers.
    fn outside_curl(&self, url: &str) -> Result<()> {
        testbed::wait_until(Duration::from_secs(5), || {
            self.tb
                .exec(&self.tb.outside, &["curl", "-g", "-s", "-m", "1", url])
                .is_ok_and(|o| o.status.success())
        });
        println!("outside$ curl -g {url}");
        print!(
            "{}",
            self.tb
                .ok(&self.tb.outside, &["curl", "-g", "-s", "-m", "3", url])?
        );
        Ok(())
    }

    /// web -> the outside world's HTTP server (masqueraded).
    fn egress_curl(&self) -> Result<String> {
        let url = format!("http://{OUTSIDE_IP}:8000/");
        self.netd(&["exec", "web", "--", "curl", "-s", "-m", "3", &url])
    }

    fn netd_quiet(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.me)
            .arg("-H")
            .arg(&self.socket)
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What the eBPF datapath did: its programs attached (TC filters on
    /// the container veths, a TCX link on the uplink), no iptables rule,
    /// and the counters it kept in the kernel.
    fn datapath_view(&mut self) -> Result<()> {
        section("the eBPF datapath: programs attached in TC, no iptables");
        println!("host$ bpftool prog show  (netd's programs)");
        for l in self
            .tb
            .ok(&self.tb.host, &["bpftool", "prog", "show"])?
            .lines()
            .filter(|l| l.contains("from_"))
        {
            println!("{l}");
        }
        println!(
            "host$ bpftool net show  (a TC filter per container veth, a TCX link on the uplink)"
        );
        print!(
            "{}",
            self.tb.ok(&self.tb.host, &["bpftool", "net", "show"])?
        );
        let rules = self.tb.ok(&self.tb.host, &["iptables-save"])?;
        println!(
            "host$ iptables-save | grep -c -- '-A'  -> {}",
            rules.lines().filter(|l| l.starts_with("-A")).count()
        );
        section("netd stats");
        self.netd(&["stats"])?;
        Ok(())
    }
}
