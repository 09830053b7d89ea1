//! Hostile and invalid input: what a real SSE parser receives, and every 4xx.

use std::time::Duration;

use crate::support::{Sse, TestServer, client, json_of};

#[tokio::test]
async fn hostile_bodies_arrive_as_one_harmless_message() {
    let server = TestServer::start().await;
    let mut s = Sse::open(&server.url("/v2/sse?username=h"), None).await;
    let cases: &[(&str, &str)] = &[
        ("x\r\n\r\ndata: injected", "x\n\ndata: injected"),
        ("a\r\nb", "a\nb"),
        ("a\rb", "a\nb"),
        ("a\n", "a\n"),
        (
            "\nevent: evil\nid: 666\nretry: 1",
            "\nevent: evil\nid: 666\nretry: 1",
        ),
        ("id: 1\r\r\revent: x", "id: 1\n\n\nevent: x"),
        ("nul\0byte", "nul\0byte"),
        ("\u{feff}bom first", "\u{feff}bom first"),
        ("🦋 howdy 🤠", "🦋 howdy 🤠"),
        (": not a comment", ": not a comment"),
    ];
    for (body, expected) in cases {
        let (status, reply) = server.post("/v2/message?username=h", *body).await;
        assert_eq!(status, 200, "{body:?}");
        let event = s.next().await;
        assert_eq!(event.data, *expected, "body {body:?}");
        assert_eq!(
            event.event, "message",
            "body {body:?} changed the event type"
        );
        assert_eq!(
            event.id,
            reply["id"].as_str().unwrap(),
            "body {body:?} changed the id"
        );
        assert_eq!(event.retry, None, "body {body:?} set retry");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_a_clear_json_error_and_change_nothing() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 1024).await;
    let mut s = Sse::open(&server.url("/v2/sse?username=u"), None).await;
    let http = client();
    let post = |path: &str| http.post(server.url(path));
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("missing username", post("/v2/message").body("x"), 400),
        (
            "empty username",
            post("/v2/message?username=").body("x"),
            400,
        ),
        (
            "repeated username",
            post("/v2/message?username=u&username=v").body("x"),
            400,
        ),
        (
            "line break in username",
            post("/v2/message?username=a%0Ab").body("x"),
            400,
        ),
        (
            "colon in username",
            post("/v2/message?username=a:b").body("x"),
            400,
        ),
        (
            "too long username",
            post(&format!("/v2/message?username={}", "u".repeat(129))).body("x"),
            400,
        ),
        ("empty body", post("/v2/message?username=u").body(""), 400),
        (
            "invalid UTF-8",
            post("/v2/message?username=u").body(vec![b'o', b'k', 0xff, 0xfe]),
            400,
        ),
        (
            "bad event name",
            post("/v2/message?username=u&event=a%0Adata:x").body("x"),
            400,
        ),
        (
            "empty event name",
            post("/v2/message?username=u&event=").body("x"),
            400,
        ),
        (
            "long event name",
            post(&format!("/v2/message?username=u&event={}", "e".repeat(65))).body("x"),
            400,
        ),
        (
            "repeated event",
            post("/v2/message?username=u&event=a&event=b").body("x"),
            400,
        ),
        (
            "body over the limit",
            post("/v2/message?username=u").body("x".repeat(1025)),
            413,
        ),
        (
            "chunked body over the limit",
            post("/v2/message?username=u").body(reqwest::Body::wrap_stream(futures::stream::iter(
                (0..64).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 100])),
            ))),
            413,
        ),
        ("broadcast empty body", post("/v2/broadcast").body(""), 400),
        (
            "broadcast bad event",
            post("/v2/broadcast?event=a%20b").body("x"),
            400,
        ),
        ("unknown route", post("/v2/nope"), 404),
        ("wrong method on sse", post("/v2/sse?username=u"), 405),
        (
            "wrong method on message",
            http.get(server.url("/v2/message?username=u")),
            405,
        ),
        (
            "unknown version",
            http.get(server.url("/v9/sse?username=u")),
            404,
        ),
        (
            "sse repeated username",
            http.get(server.url("/v2/sse?username=u&username=u")),
            400,
        ),
        (
            "sse repeated lastEventId",
            http.get(server.url("/v2/sse?username=u&lastEventId=1&lastEventId=2")),
            400,
        ),
    ];
    for (name, request, expected) in cases {
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "{name}: {body}");
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no JSON error: {body}"));
        assert!(!message.is_empty(), "{name}");
    }
    // The largest allowed body still passes, and it is the first thing the stream receives.
    let (status, _) = server
        .post("/v2/message?username=u", "z".repeat(1024))
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.next().await.data, "z".repeat(1024));
    s.expect_silence(Duration::from_millis(100)).await;
    assert!(
        server
            .metric(r#"http_requests_rejected_total{status="400"}"#)
            .await
            >= 14.0
    );
    assert_eq!(
        server
            .metric(r#"http_requests_rejected_total{status="413"}"#)
            .await,
        2.0
    );
    server.stop().await;
}
