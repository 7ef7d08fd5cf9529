package web

import (
	"strings"
	"testing"

	"golang.org/x/net/html"
)

// xssCorpus is hostile HTML mail, written for this test after the classic filter-evasion
// lists: each entry must come out inert.
var xssCorpus = []string{
	`<script>document.title="pwned"</script>`,
	`<SCRIPT SRC=https://evil.example/x.js></SCRIPT>`,
	`<scr<script>ipt>alert(1)</scr</script>ipt>`,
	`<img src=x onerror=alert(1)>`,
	`<img src="https://tracker.example/p.gif?u=1" width=1 height=1>`,
	`<img src=//tracker.example/p.gif>`,
	`<img srcset="https://tracker.example/a.png 1x, https://tracker.example/b.png 2x">`,
	`<picture><source srcset="https://tracker.example/a.webp"><img src="https://tracker.example/a.png"></picture>`,
	`<IMG SRC="jav&#x09;ascript:alert('XSS');">`,
	`<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+PC9zdmc+">`,
	`<a href="javascript:alert(1)">click</a>`,
	`<a href="JaVaScRiPt:alert(1)">click</a>`,
	`<a href=" javascript:alert(1)">click</a>`,
	`<a href="java&#115;cript:alert(1)">click</a>`,
	`<a href="jav&#x0A;ascript:alert(1)">click</a>`,
	`<a href="vbscript:msgbox(1)">click</a>`,
	`<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">click</a>`,
	`<a href="/logout">our own path</a>`,
	`<a href="https://ok.example/" onclick="alert(1)" onmouseover="alert(2)">hover</a>`,
	`<body onload=alert(1)>`,
	`<div style="background:url(https://tracker.example/bg.png)">bg</div>`,
	`<div style="width: expression(alert(1))">ie</div>`,
	`<table background="https://tracker.example/t.png"><tr><td background="https://tracker.example/td.png">x</td></tr></table>`,
	`<style>@import url(https://tracker.example/s.css); body{background:url("https://tracker.example/b.png")}</style>`,
	`<style>@font-face{font-family:x;src:url(https://tracker.example/f.woff)}</style>`,
	`<link rel=stylesheet href=https://tracker.example/s.css>`,
	`<link rel=preload as=font href=https://tracker.example/f.woff2>`,
	`<svg onload=alert(1)><circle r=5 /></svg>`,
	`<svg><script>alert(1)</script></svg>`,
	`<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>`,
	`<svg><image href="https://tracker.example/s.png"/></svg>`,
	`<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>`,
	`<iframe src="https://evil.example/"></iframe>`,
	`<iframe srcdoc="<script>alert(1)</script>"></iframe>`,
	`<object data="https://evil.example/x.swf"></object><embed src="https://evil.example/x.swf">`,
	`<form action="https://evil.example/"><input name=p type=password><button formaction="javascript:alert(1)">go</button></form>`,
	`<meta http-equiv="refresh" content="0;url=https://evil.example/">`,
	`<base href="https://evil.example/">`,
	`<video poster="https://tracker.example/v.png"><source src="https://tracker.example/v.mp4"></video>`,
	`<audio src="https://tracker.example/a.mp3"></audio>`,
	`<div id="x" data-x="y" onfocus="alert(1)" autofocus tabindex=1>focus</div>`,
	`<details open ontoggle=alert(1)>x</details>`,
	`<p>unclosed <b>bold <i>italic <a href="https://ok.example/">link`,
	`<<script>script>alert(1)<</script>/script>`,
	`<!--<img src="--><img src=x onerror=alert(1)//">`,
	`<noscript><p title="</noscript><img src=x onerror=alert(1)>">`,
	`<textarea><img src=x onerror=alert(1)></textarea>`,
	`<xmp><img src=x onerror=alert(1)></xmp>`,
	`<div title="&quot; onmouseover=&quot;alert(1)">q</div>`,
	"<img src=\"x\"\x00onerror=alert(1)>",
	`<blockquote cite="javascript:alert(1)">quote</blockquote>`,
	`<area href="javascript:alert(1)">`,
}

// hasHostile reports anything in sanitised output that could run script or load from elsewhere,
// by parsing the output the way a browser would.
func hasHostile(out string) []string {
	var found []string
	z := html.NewTokenizer(strings.NewReader(out))
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			break
		}
		if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
			continue
		}
		tok := z.Token()
		switch tok.Data {
		case "script", "style", "link", "iframe", "object", "embed", "form", "input", "button", "meta", "base",
			"svg", "math", "video", "audio", "source", "picture", "body", "textarea", "xmp", "noscript", "image":
			found = append(found, "<"+tok.Data+">")
		}
		for _, a := range tok.Attr {
			k, v := strings.ToLower(a.Key), strings.ToLower(strings.TrimSpace(a.Val))
			switch {
			case strings.HasPrefix(k, "on"):
				found = append(found, k)
			case k == "style" || k == "srcset" || k == "background" || k == "poster" || k == "formaction" || k == "srcdoc" || k == "xlink:href":
				found = append(found, k)
			case k == "src" && !strings.HasPrefix(v, "data:image/png;") && !strings.HasPrefix(v, "data:image/gif;"):
				found = append(found, "src="+v)
			case k == "href" && !strings.HasPrefix(v, "https://") && !strings.HasPrefix(v, "http://") && !strings.HasPrefix(v, "mailto:"):
				found = append(found, "href="+v)
			case k == "cite" && strings.Contains(v, "script"):
				found = append(found, "cite="+v)
			}
		}
	}
	return found
}

func TestSanitiserCorpus(t *testing.T) {
	p := newPolicy()
	for _, in := range xssCorpus {
		out := p.Sanitize(in)
		if bad := hasHostile(out); len(bad) > 0 {
			t.Errorf("input  %s\noutput %s\nleft   %v", in, out, bad)
		}
	}
}

func TestSanitiserKeepsMail(t *testing.T) {
	p := newPolicy()
	for _, tc := range []struct{ in, want string }{
		{`<p>Hello <b>Bob</b>, <i>thanks</i></p>`, `<p>Hello <b>Bob</b>, <i>thanks</i></p>`},
		{`<a href="https://shop.example/order/42">order</a>`, `<a href="https://shop.example/order/42" rel="nofollow noreferrer noopener" target="_blank">order</a>`},
		{`<a href="mailto:help@example.com">mail us</a>`, `<a href="mailto:help@example.com" rel="nofollow noreferrer">mail us</a>`},
		{`<ul><li>one</li><li>two</li></ul>`, `<ul><li>one</li><li>two</li></ul>`},
		{`<table><tr><td>a</td></tr></table>`, `<table><tr><td>a</td></tr></table>`},
		{`<img src="data:image/png;base64,iVBORw0KGgo=" alt="logo">`, `<img src="data:image/png;base64,iVBORw0KGgo=" alt="logo">`},
		{`<img src="https://tracker.example/p.gif" alt="logo">`, `<img alt="logo">`},
		{`<div style="color:red">red</div>`, `<div>red</div>`},
		{`<script>x</script>text`, `text`},
		{`<blockquote>quoted</blockquote>`, `<blockquote>quoted</blockquote>`},
	} {
		if got := p.Sanitize(tc.in); got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

// The corpus is also the seed of a fuzz target: whatever the input, nothing hostile survives.
func FuzzSanitiser(f *testing.F) {
	for _, s := range xssCorpus {
		f.Add(s)
	}
	p := newPolicy()
	f.Fuzz(func(t *testing.T, in string) {
		out := p.Sanitize(in)
		if bad := hasHostile(out); len(bad) > 0 {
			t.Fatalf("input %q\noutput %q\nleft %v", in, out, bad)
		}
	})
}
