//! A real gateway on 127.0.0.1 with an ephemeral port, and a real HTTP client for it.
#![allow(dead_code)]

pub mod binary;
pub mod node;
pub mod python;
pub mod services;

use std::io::Cursor;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use image_gateway::auth::StaticKeys;
use image_gateway::server::{serve, ServeOptions};
use image_gateway::{BoxError, Gateway};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const ALICE_KEY: &str = "pk_live_alice_0123456789abcdef";
pub const BOB_KEY: &str = "pk_live_bob_0123456789abcdef";
pub const EDITS: &str = "/v1/images/edits";

pub fn keys() -> StaticKeys {
    StaticKeys::new()
        .with_key("alice", ALICE_KEY)
        .unwrap()
        .with_key("bob", BOB_KEY)
        .unwrap()
}

/// A gateway served on its own port until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub async fn start(gateway: Gateway) -> TestServer {
        TestServer::start_with(gateway, ServeOptions::default()).await
    }

    pub async fn start_with(gateway: Gateway, options: ServeOptions) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, gateway, options, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
        }
    }

    /// A handle on a server this test did not start (the example, in another process).
    pub fn at(addr: SocketAddr) -> TestServer {
        TestServer { addr, stop: None }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        send(self.addr, req).await
    }

    /// POSTs a multipart form to the edits endpoint as `key`.
    pub async fn edit_form(&self, key: &str, form: Form) -> Reply {
        let (content_type, body) = form.finish();
        let req = Request::post(EDITS)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", content_type)
            .body(Full::new(body))
            .unwrap();
        self.send(req).await
    }

    /// The `(available, held)` balance of `key`'s account.
    pub async fn balance(&self, key: &str) -> (i64, i64) {
        let req = Request::get("/api/v1/balance")
            .header("x-api-key", key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let json = self.send(req).await.json();
        (
            json["available"].as_i64().unwrap(),
            json["held"].as_i64().unwrap(),
        )
    }

    /// POSTs a JSON body to the edits endpoint as `key`.
    pub async fn edit_json(&self, key: &str, json: &str) -> Reply {
        let req = Request::post(EDITS)
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::copy_from_slice(json.as_bytes())))
            .unwrap();
        self.send(req).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A loopback port that refuses connections and stays this test's: a socket bound to it
/// that does not listen (a connection gets a reset, as from a closed port), so no other
/// test can take the port meanwhile. `listen` on it opens the port later.
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// One HTTP/1.1 exchange on a fresh connection.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let (mut parts, body) = req.into_parts();
    parts
        .headers
        .entry("host")
        .or_insert_with(|| addr.to_string().parse().unwrap());
    let res = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    /// Asserts the spec's error envelope and returns `(status, code, param)`.
    pub fn error(&self) -> (u16, String, Option<String>) {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "no message in {v}");
        assert!(e["type"].is_string(), "no type in {v}");
        (
            self.status.as_u16(),
            e["code"].as_str().expect("code").to_owned(),
            e["param"].as_str().map(str::to_owned),
        )
    }

    /// Decodes every `b64_json` image of a success answer.
    pub fn images(&self) -> Vec<Vec<u8>> {
        use base64::Engine;
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| {
                base64::engine::general_purpose::STANDARD
                    .decode(d["b64_json"].as_str().expect("b64_json"))
                    .expect("valid base64")
            })
            .collect()
    }
}

/// A multipart/form-data body built by hand, so part order and names are exact.
pub struct Form {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Form {
    fn default() -> Self {
        Form {
            boundary: "----image-gateway-test-7d91f2a0".into(),
            body: Vec::new(),
        }
    }
}

impl Form {
    pub fn new() -> Form {
        Form::default()
    }

    pub fn text(mut self, name: &str, value: &str) -> Form {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self
    }

    pub fn file(mut self, name: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Form {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// Ends the form inside an open file part: the caller streams that part's bytes.
    pub fn open_file(mut self, name: &str) -> (String, Bytes) {
        self.body.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f.bin\"\r\n\r\n",
                self.boundary
            )
            .as_bytes(),
        );
        (
            format!("multipart/form-data; boundary={}", self.boundary),
            Bytes::from(self.body),
        )
    }

    pub fn finish(mut self) -> (String, Bytes) {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (
            format!("multipart/form-data; boundary={}", self.boundary),
            Bytes::from(self.body),
        )
    }
}

/// A real PNG of `width` x `height` with a gradient.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x * 7) as u8, (y * 5) as u8, 128, 255])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A real JPEG of `width` x `height`.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 11) as u8, 64])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// Decodes an image and returns its format and dimensions.
pub fn inspect(bytes: &[u8]) -> (image::ImageFormat, u32, u32) {
    let format = image::guess_format(bytes).expect("a known image format");
    let img = image::load_from_memory(bytes).expect("a decodable image");
    (format, img.width(), img.height())
}

/// A gateway with alice and bob and the reference backend.
pub async fn reference_server() -> TestServer {
    TestServer::start(Gateway::builder().keys(keys()).build()).await
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("igw-{label}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A gateway that keeps files and generations in `dir`, as the example server does.
pub fn persistent_gateway(dir: &std::path::Path) -> Gateway {
    Gateway::builder()
        .keys(keys())
        .store(image_gateway::store::LocalFileStore::open(dir).unwrap())
        .generations(
            image_gateway::generations::SqliteGenerations::open(dir.join("generations.db"))
                .unwrap(),
        )
        .build()
}

impl TestServer {
    /// Uploads `files` (name, bytes) in one batch as `key`.
    pub async fn upload(&self, key: &str, files: &[(&str, &[u8])]) -> Reply {
        let form = files.iter().fold(Form::new(), |form, (name, bytes)| {
            form.file("files", name, "application/octet-stream", bytes)
        });
        let (content_type, body) = form.finish();
        let req = Request::post("/api/v1/upload")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", content_type)
            .body(Full::new(body))
            .unwrap();
        self.send(req).await
    }

    /// A bodiless request with `method` to `path` as `key`.
    pub async fn call(&self, method: http::Method, path: &str, key: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        self.send(req).await
    }

    /// A JSON edit by generation id, retried while the generation is still being stored.
    pub async fn edit_generation(&self, key: &str, id: &str) -> Reply {
        let body = format!(
            r#"{{"model":"gpt-image-2","prompt":"next step","generation_id":"{id}","n":1}}"#
        );
        for _ in 0..100 {
            let reply = self.edit_json(key, &body).await;
            if reply.status != StatusCode::CONFLICT {
                return reply;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("generation {id} never became ready");
    }
}

impl Reply {
    /// The keys of an upload answer.
    pub fn uploaded_keys(&self) -> Vec<String> {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["uploaded"]
            .as_array()
            .expect("uploaded")
            .iter()
            .map(|u| u["key"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The generation ids of an edit answer.
    pub fn generation_ids(&self) -> Vec<String> {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["picklyone_generation_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    }
}

/// A log writer that keeps every line, for tests that read what was logged.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
