//! The verb dispatcher every weft binary's `main()` calls. It owns env parsing, version
//! negotiation, result encoding and error printing, so plugins only implement verbs.

use crate::env::{Command, Env};
use crate::error::{Error, Result};
use crate::netconf::NetConf;
use crate::result::CniResult;
use crate::version::{supported_versions, Version};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Everything one verb needs: the validated environment, the decoded config, and the raw
/// stdin (delegates get exactly the bytes we got).
#[derive(Debug, Clone)]
pub struct Request {
    pub env: Env,
    pub conf: NetConf,
    pub stdin: Vec<u8>,
}

impl Request {
    /// A per-container argument: the config's `args.cni.<key>` wins over `CNI_ARGS` (the
    /// conventions doc prefers the config, which a runtime can carry structured values in).
    pub fn arg(&self, key: &str) -> Option<String> {
        let from_conf = self
            .conf
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get(key))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        from_conf.or_else(|| self.env.args.get(key).map(str::to_owned))
    }

    /// The attachment this request is about: (network name, CNI_CONTAINERID, CNI_IFNAME).
    /// Code 4 without a container ID or ifname (VERSION, STATUS, GC have none).
    pub fn attachment(&self) -> Result<crate::AttachmentKey> {
        crate::AttachmentKey::new(&self.conf.name, &self.env.container_id, &self.env.ifname)
    }
}

/// One function per verb. A plugin never prints to stdout; it returns a value or an [`Error`].
pub trait Plugin {
    fn add(&self, req: &Request) -> Result<CniResult>;
    fn del(&self, req: &Request) -> Result<()>;
    fn check(&self, req: &Request) -> Result<()>;
    fn status(&self, _req: &Request) -> Result<()> {
        Ok(())
    }
    fn gc(&self, _req: &Request) -> Result<()> {
        Ok(())
    }
}

/// A plugin written in its own error type. Implement this instead of [`Plugin`]: the blanket
/// impl turns every error into a CNI error through the plugin's `Into<conf::Error>`, the one
/// place that plugin decides codes.
pub trait Verbs {
    type Error: Into<Error>;
    fn add(&self, req: &Request) -> std::result::Result<CniResult, Self::Error>;
    fn del(&self, req: &Request) -> std::result::Result<(), Self::Error>;
    fn check(&self, req: &Request) -> std::result::Result<(), Self::Error>;
    fn status(&self, _req: &Request) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
    fn gc(&self, _req: &Request) -> std::result::Result<(), Self::Error> {
        Ok(())
    }
}

impl<T: Verbs> Plugin for T {
    fn add(&self, req: &Request) -> Result<CniResult> {
        Verbs::add(self, req).map_err(Into::into)
    }
    fn del(&self, req: &Request) -> Result<()> {
        Verbs::del(self, req).map_err(Into::into)
    }
    fn check(&self, req: &Request) -> Result<()> {
        Verbs::check(self, req).map_err(Into::into)
    }
    fn status(&self, req: &Request) -> Result<()> {
        Verbs::status(self, req).map_err(Into::into)
    }
    fn gc(&self, req: &Request) -> Result<()> {
        Verbs::gc(self, req).map_err(Into::into)
    }
}

/// Runs one verb against the process environment and stdio, then exits with the CNI exit code.
pub fn run<P: Plugin>(plugin: &P, about: &str) -> ! {
    let code = run_with(
        plugin,
        about,
        |k| std::env::var(k).ok(),
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code)
}

/// The most stdin a plugin reads: 4 MiB. A conflist with its `prevResult` is a few KiB, and a
/// GC listing 10,000 attachments (more pods than any node runs) about 700 KiB; anything larger
/// is not a network config, and reading it would only cost memory and time before failing.
pub const MAX_STDIN: u64 = 4 << 20;

/// [`run`] with the environment and stdio passed in, so the whole contract is unit-testable.
/// Returns the exit code: 0 on success, 1 after printing an error.
pub fn run_with<P: Plugin>(
    plugin: &P,
    about: &str,
    vars: impl Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let mut input = Vec::new();
    let outcome = match stdin.take(MAX_STDIN + 1).read_to_end(&mut input) {
        Ok(n) if n as u64 > MAX_STDIN => {
            input.clear(); // never parsed: the error says which version it cannot know
            Err(Error::invalid_config(format!(
                "stdin is larger than {} MiB: that is no network config",
                MAX_STDIN >> 20
            )))
        }
        Ok(_) => dispatch(plugin, &vars, &input),
        Err(e) => Err(Error::io(format!("error reading stdin: {e}"))),
    };
    let printed = match outcome {
        Ok(None) => return 0,
        Ok(Some(out)) => writeln!(stdout, "{out}").map(|_| 0),
        Err(err) => {
            if vars("CNI_COMMAND").is_none_or(|c| c.is_empty()) && !about.is_empty() {
                let _ = writeln!(stderr, "{about}");
                let _ = writeln!(
                    stderr,
                    "CNI protocol versions supported: {}",
                    supported_versions().join(", ")
                );
            }
            let _ = writeln!(stderr, "{err}");
            writeln!(stdout, "{}", err.to_json(error_version(&input))).map(|_| 1)
        }
    };
    // If stdout itself is gone there is nobody left to tell; the exit code still says it.
    printed.unwrap_or(1)
}

fn dispatch<P: Plugin>(
    plugin: &P,
    vars: &impl Fn(&str) -> Option<String>,
    input: &[u8],
) -> Result<Option<Value>> {
    let env = Env::from_vars(vars)?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(input)));
    }
    let conf = NetConf::parse(input)?;
    let version = conf.cni_version;
    match env.command {
        Command::Check if !version.supports_check() => {
            return Err(Error::incompatible_version(format!(
                "config version {version} does not allow CHECK (0.4.0 and later)"
            )))
        }
        Command::Status | Command::Gc if !version.supports_gc_status() => {
            return Err(Error::incompatible_version(format!(
                "config version {version} does not allow {} (1.1.0 and later)",
                env.command.as_str()
            )))
        }
        _ => {}
    }
    let req = Request {
        env,
        conf,
        stdin: input.to_vec(),
    };
    let verb = || -> Result<Option<Value>> {
        match req.env.command {
            Command::Add => {
                let result = plugin.add(&req)?;
                result.validate()?;
                Ok(Some(result.encode(version)))
            }
            Command::Del => plugin.del(&req).map(|_| None),
            Command::Check => plugin.check(&req).map(|_| None),
            Command::Status => plugin.status(&req).map(|_| None),
            Command::Gc => plugin.gc(&req).map(|_| None),
            Command::Version => unreachable!("answered above"),
        }
    };
    catch_unwind(AssertUnwindSafe(verb)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::internal(format!("plugin panicked: {what}")))
    })
}

/// VERSION answers whatever the runtime sent (often `{"cniVersion":"1.1.0"}`, sometimes nothing)
/// with its own version echoed when it is a version string, else the newest we speak.
fn version_reply(input: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|s| is_version_string(s))
        .unwrap_or_else(|| Version::NEWEST.as_str().to_owned());
    json!({"cniVersion": asked, "supportedVersions": supported_versions()})
}

fn is_version_string(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Errors speak the config's version when we speak it too, else the newest.
fn error_version(input: &[u8]) -> &'static str {
    serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .and_then(|s| Version::parse(s).ok())
        })
        .unwrap_or(Version::NEWEST)
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code;
    use std::collections::HashMap;

    /// Pass-through plugin that records nothing; enough to exercise the dispatcher.
    struct Echo;
    impl Plugin for Echo {
        fn add(&self, req: &Request) -> Result<CniResult> {
            if req.conf.raw.contains_key("panic") {
                panic!("boom");
            }
            req.conf
                .prev_result()?
                .ok_or_else(|| Error::invalid_config("needs prevResult"))
        }
        fn del(&self, _: &Request) -> Result<()> {
            Ok(())
        }
        fn check(&self, _: &Request) -> Result<()> {
            Ok(())
        }
    }

    fn call(cmd: &str, stdin: &str) -> (i32, String) {
        let vars: HashMap<&str, &str> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
        .into();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(
            &Echo,
            "echo",
            |k| vars.get(k).map(|v| v.to_string()),
            &mut stdin.as_bytes(),
            &mut out,
            &mut err,
        );
        (code, String::from_utf8(out).unwrap())
    }

    fn err_code(out: &str) -> u64 {
        serde_json::from_str::<Value>(out).unwrap()["code"]
            .as_u64()
            .unwrap()
    }

    #[test]
    fn version_with_and_without_stdin() {
        let (rc, out) = call("VERSION", "");
        assert_eq!(rc, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let (_, out) = call("VERSION", r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap()["cniVersion"],
            "0.4.0"
        );
    }

    #[test]
    fn stdin_past_the_cap_is_refused_without_reading_it_all() {
        // A reader that would go on forever: only MAX_STDIN + 1 bytes are ever taken from it.
        struct Endless(u64);
        impl Read for Endless {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                buf.fill(b' ');
                self.0 += buf.len() as u64;
                Ok(buf.len())
            }
        }
        let mut endless = Endless(0);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let rc = run_with(
            &Echo,
            "echo",
            |k| (k == "CNI_COMMAND").then(|| "ADD".to_string()),
            &mut endless,
            &mut out,
            &mut err,
        );
        assert_eq!(rc, 1);
        let out = String::from_utf8(out).unwrap();
        assert_eq!(err_code(&out), u64::from(code::INVALID_CONFIG), "{out}");
        assert!(out.contains("larger than 4 MiB"), "{out}");
        assert!(
            endless.0 <= MAX_STDIN + 64 * 1024,
            "read {} bytes",
            endless.0
        );
        // Just under the cap is read and parsed (and fails as JSON, not as size).
        let (_, out) = call("ADD", &" ".repeat(MAX_STDIN as usize));
        assert_ne!(err_code(&out), u64::from(code::INVALID_CONFIG), "{out}");
    }

    #[test]
    fn add_encodes_in_config_version() {
        let prev = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":0,"address":"10.0.0.2/24"}]}"#;
        for v in Version::ALL {
            let conf =
                format!(r#"{{"cniVersion":"{v}","name":"n","type":"echo","prevResult":{prev}}}"#);
            let (rc, out) = call("ADD", &conf);
            assert_eq!(rc, 0, "{out}");
            let r: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(r["cniVersion"], v.as_str());
            assert_eq!(
                r["ips"][0].get("version").is_some(),
                v.has_ip_version_field()
            );
        }
    }

    #[test]
    fn verb_version_gates() {
        let (rc, out) = call(
            "CHECK",
            r#"{"cniVersion":"0.3.1","name":"n","type":"echo"}"#,
        );
        assert_eq!((rc, err_code(&out)), (1, 1));
        for verb in ["GC", "STATUS"] {
            let (rc, out) = call(verb, r#"{"cniVersion":"1.0.0","name":"n","type":"echo"}"#);
            assert_eq!((rc, err_code(&out)), (1, 1));
            let (rc, out) = call(verb, r#"{"cniVersion":"1.1.0","name":"n","type":"echo"}"#);
            assert_eq!((rc, out.as_str()), (0, ""));
        }
    }

    /// The whole version x verb matrix: what succeeds, what is refused with code 1.
    #[test]
    fn every_version_by_every_verb() {
        let prev = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"interface":0,"address":"10.0.0.2/24"}]}"#;
        for v in Version::ALL {
            let conf =
                format!(r#"{{"cniVersion":"{v}","name":"n","type":"echo","prevResult":{prev}}}"#);
            for verb in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"] {
                let (rc, out) = call(verb, &conf);
                let allowed = match verb {
                    "CHECK" => v.supports_check(),
                    "STATUS" | "GC" => v.supports_gc_status(),
                    _ => true,
                };
                if allowed {
                    assert_eq!(rc, 0, "{verb} at {v}: {out}");
                    let prints = matches!(verb, "ADD" | "VERSION");
                    assert_eq!(!out.is_empty(), prints, "{verb} at {v} output: {out}");
                    if verb != "VERSION" && prints {
                        assert_eq!(
                            serde_json::from_str::<Value>(&out).unwrap()["cniVersion"],
                            v.as_str()
                        );
                    }
                } else {
                    assert_eq!((rc, err_code(&out)), (1, 1), "{verb} at {v}");
                }
            }
        }
    }

    #[test]
    fn config_args_win_over_cni_args() {
        let stdin =
            br#"{"cniVersion":"1.0.0","name":"n","type":"t","args":{"cni":{"IP":"10.0.0.9"}}}"#;
        let vars = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/p"),
            ("CNI_ARGS", "IP=10.0.0.5;MAC=aa"),
        ];
        let req = Request {
            env: Env::from_vars(|k| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
            .unwrap(),
            conf: NetConf::parse(stdin).unwrap(),
            stdin: stdin.to_vec(),
        };
        assert_eq!(req.arg("IP").as_deref(), Some("10.0.0.9"));
        assert_eq!(req.arg("MAC").as_deref(), Some("aa"));
        assert_eq!(req.arg("NOPE"), None);
    }

    #[test]
    fn panic_becomes_error_999() {
        let prev = r#"{"cniVersion":"1.0.0"}"#;
        let (rc, out) = call(
            "ADD",
            &format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"echo","panic":1,"prevResult":{prev}}}"#
            ),
        );
        assert_eq!((rc, err_code(&out)), (1, code::INTERNAL as u64));
        assert!(out.contains("boom"));
    }

    #[test]
    fn errors_speak_config_version() {
        let (_, out) = call("ADD", r#"{"cniVersion":"0.4.0","name":"n","type":"echo"}"#);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["code"], 7);
    }
}
