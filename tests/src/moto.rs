//! moto, the stand-in for EC2 and EBS, with signature checking on.
//!
//! [`run`] gives an EC2 test a moto server of its own and runs the test's body in a child
//! process of the test binary whose environment holds the credentials of an IAM user made in
//! that moto (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`): the product finds them through the
//! SDK's standard chain, as it would in production, and a test process can set no environment
//! of its own once its threads run. The child knows it is one by [`ENDPOINT_VAR`].
//!
//! moto runs from a Python venv: `MIRARI_MOTO_VENV`, by default `target/venv` in the workspace,
//! made by `.ci/run` (`python3 -m venv target/venv && target/venv/bin/pip install -r
//! tests/moto/requirements.txt`), as `tests/moto/server.py`: `moto_server` with a fix to its
//! signature check for requests without a body (EBS's reads and `CompleteSnapshot`, which moto
//! refuses whoever signs them; see the script). It starts with `INITIAL_NO_AUTH_ACTION_COUNT` set to the
//! number of calls that make the user, so every call after them is checked, and with
//! `MOTO_ENABLE_AMI_VALIDATION`, so an unknown AMI is refused. `tests/moto/aws_calls.py` makes
//! those calls with boto3 (which moto brings), and lets tests look at moto's state through a
//! client that is not the one under test ([`MotoEnv::call`]).

use std::fs;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::coordinators::free_port;
use crate::{eventually, http_request, stderr, stdout};

/// Set in the child process that runs a test's body: moto's endpoint URL.
pub const ENDPOINT_VAR: &str = "MIRARI_MOTO_ENDPOINT";
/// The region the tests use.
pub const REGION: &str = "eu-west-1";
const USER: &str = "mirari-test";

/// The secret key the test's body is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// The IAM user's own.
    Right,
    /// The user's access key ID with another secret: every signature is wrong.
    Wrong,
}

/// A moto server for one test; killed when dropped.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    process: Child,
    dir: tempfile::TempDir,
}

/// What a test's body has: moto's endpoint, and boto3 to look at moto with.
#[derive(Debug, Clone)]
pub struct MotoEnv {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

fn venv() -> PathBuf {
    std::env::var_os("MIRARI_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/venv"))
}

/// One of the Python scripts beside the harness, in `tests/moto/`.
fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("moto").join(name)
}

/// Makes `calls` (`[{"service", "operation", "params"}]`) with boto3 against `endpoint`, with
/// the credentials in `env` (or this process's); their results in order, or boto3's error.
fn boto3(endpoint: &str, calls: Value, env: &[(&str, &str)]) -> Result<Vec<Value>, String> {
    use std::io::Write;
    let python = venv().join("bin/python");
    let mut child = Command::new(&python)
        .arg(script("aws_calls.py"))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    let request = json!({ "endpoint": endpoint, "region": REGION, "calls": calls });
    child.stdin.take().expect("stdin").write_all(request.to_string().as_bytes()).expect("write the calls");
    let out = child.wait_with_output().expect("boto3 ends");
    if !out.status.success() {
        return Err(stderr(&out).trim().to_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("boto3 printed no JSON ({e}): {}", stdout(&out)))
}

impl Moto {
    /// Starts moto on a free port below the ephemeral range, waits until it answers, and makes
    /// an IAM user allowed everything, with an access key.
    pub fn start() -> Self {
        let python = venv().join("bin/python");
        let installed = Command::new(&python).args(["-c", "import moto.server"]).stderr(Stdio::null()).status();
        assert!(
            installed.is_ok_and(|status| status.success()),
            "{} cannot import moto: install it with `python3 -m venv target/venv && target/venv/bin/pip install -r \
             tests/moto/requirements.txt` (.ci/run does), or point MIRARI_MOTO_VENV at a venv that has it",
            python.display()
        );
        let setup = json!([
            { "service": "iam", "operation": "create_user", "params": { "UserName": USER } },
            { "service": "iam", "operation": "put_user_policy", "params": {
                "UserName": USER,
                "PolicyName": "everything",
                "PolicyDocument": json!({
                    "Version": "2012-10-17",
                    "Statement": [{ "Effect": "Allow", "Action": "*", "Resource": "*" }],
                }).to_string(),
            } },
            { "service": "iam", "operation": "create_access_key", "params": { "UserName": USER } },
        ]);
        let unchecked = setup.as_array().map_or(0, Vec::len);

        let dir = tempfile::Builder::new().prefix("mirari-moto-").tempdir().expect("scratch dir");
        let log = fs::File::create(dir.path().join("moto.log")).expect("moto log");
        let port = free_port();
        let process = Command::new(&python)
            .arg(script("server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", unchecked.to_string())
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start moto with {}: {e}", python.display()));
        let mut moto = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            process,
            dir,
        };
        let address = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(60), "moto to answer", || {
            if let Ok(Some(status)) = moto.process.try_wait() {
                panic!("moto ended ({status}) before it answered:\n{}", moto.log());
            }
            // moto's own API: not an AWS action, so it does not count as one of the unchecked.
            match http_request(&address, "/moto-api/") {
                Ok(answer) if answer.status == 200 => Ok(()),
                Ok(answer) => Err(format!("HTTP {}", answer.status)),
                Err(e) => Err(e),
            }
        });

        // Any credentials do while signatures are not checked yet.
        let made = boto3(&moto.endpoint, setup, &[("AWS_ACCESS_KEY_ID", "setup"), ("AWS_SECRET_ACCESS_KEY", "setup")])
            .unwrap_or_else(|e| panic!("making the IAM user: {e}\n{}", moto.log()));
        let key = &made.last().expect("create_access_key's result")["AccessKey"];
        moto.access_key_id = key["AccessKeyId"].as_str().expect("AccessKeyId").to_owned();
        moto.secret_access_key = key["SecretAccessKey"].as_str().expect("SecretAccessKey").to_owned();
        moto
    }

    /// What moto printed.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// This test binary running test `test` alone, with moto's endpoint and credentials (its
    /// secret as `secret` says) in its environment and no other AWS configuration.
    fn child(&self, test: &str, secret: Secret) -> Command {
        let secret = match secret {
            Secret::Right => self.secret_access_key.clone(),
            Secret::Wrong => format!("{}wrong", &self.secret_access_key[..self.secret_access_key.len() / 2]),
        };
        let nowhere = self.dir.path().join("no-aws-config");
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args([test, "--exact", "--nocapture", "--test-threads", "1"])
            .env(ENDPOINT_VAR, &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", &nowhere)
            .env("AWS_SHARED_CREDENTIALS_FILE", &nowhere)
            // Nothing may ask the instance metadata service: this is no EC2 instance.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("moto's last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
}

impl MotoEnv {
    /// One call with boto3 and the credentials of this process's environment: its result.
    pub fn call(&self, service: &str, operation: &str, params: Value) -> Value {
        let calls = json!([{ "service": service, "operation": operation, "params": params }]);
        let mut results =
            boto3(&self.endpoint, calls, &[]).unwrap_or_else(|e| panic!("boto3 {service} {operation}: {e}"));
        results.pop().expect("one result")
    }
}

/// Runs the calling test's `body` against a moto of its own, in a child process whose
/// environment carries the IAM user's credentials (with `secret`). In that child (where
/// [`ENDPOINT_VAR`] is set) it runs `body` on a tokio runtime; in the test process it starts
/// moto, runs the child and fails if the child's test did not pass.
pub fn run<F, Fut>(secret: Secret, body: F)
where
    F: FnOnce(MotoEnv) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Ok(endpoint) = std::env::var(ENDPOINT_VAR) {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        runtime.block_on(body(MotoEnv { endpoint }));
        return;
    }
    // libtest runs each test on a thread named after it.
    let test = std::thread::current().name().expect("a test thread is named after its test").to_owned();
    let moto = Moto::start();
    let out = moto.child(&test, secret).output().expect("run the test's child process");
    let (printed, errors) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{test} failed in its child process:\n{printed}\n{errors}");
    assert!(printed.contains("1 passed"), "the child process ran no test named {test}:\n{printed}\n{errors}");
    // What the body printed, for `--nocapture` (libtest keeps it otherwise).
    eprint!("{errors}");
}
