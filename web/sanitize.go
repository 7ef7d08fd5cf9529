package web

import (
	"encoding/base64"
	"net/url"
	"regexp"
	"strings"

	"github.com/microcosm-cc/bluemonday"
)

// dataImage is the only image source kept from mail: an inline picture that loads nothing.
// SVG is left out on purpose (it is a document that can carry script).
var dataImage = regexp.MustCompile(`^data:image/(gif|jpeg|png|webp);base64,[A-Za-z0-9+/=]+$`)

// webLink is what an <a href> may point to: the web and mail addresses, never javascript:,
// data:, or a path on mailgate's own origin.
var webLink = regexp.MustCompile(`(?i)^(https?://|mailto:)`)

// newPolicy is the sanitiser for HTML mail, shaped after bluemonday's UGCPolicy but stricter:
// structure, text formatting, lists, tables and links survive; no script or event handler, no
// style (so no CSS url() and no web fonts), no remote images, srcset, background or forms, so
// showing a mail tells no tracker that it was read.
func newPolicy() *bluemonday.Policy {
	p := bluemonday.NewPolicy()
	p.AllowAttrs("dir").Matching(bluemonday.Direction).Globally()
	p.AllowAttrs("lang").Matching(regexp.MustCompile(`^[a-zA-Z]{2,8}(-[a-zA-Z0-9]{1,8}){0,3}$`)).Globally()
	p.AllowAttrs("title").Matching(bluemonday.Paragraph).Globally()
	p.AllowElements("article", "aside", "section", "header", "footer", "main", "figure", "figcaption",
		"h1", "h2", "h3", "h4", "h5", "h6", "hgroup", "br", "div", "hr", "p", "span", "wbr", "center",
		"abbr", "acronym", "cite", "code", "dfn", "em", "mark", "s", "samp", "strong", "sub", "sup", "var",
		"b", "i", "pre", "small", "strike", "tt", "u", "del", "ins", "kbd", "q", "blockquote", "address",
		"details", "summary", "rp", "rt", "ruby", "bdi", "bdo")
	p.AllowLists()
	p.AllowTables()

	p.RequireParseableURLs(true)
	p.AllowRelativeURLs(false)
	// A web link must name a host: "http://" alone would come out as "http:", a link to the
	// page itself.
	hasHost := func(u *url.URL) bool { return u.Host != "" }
	p.AllowURLSchemeWithCustomPolicy("http", hasHost)
	p.AllowURLSchemeWithCustomPolicy("https", hasHost)
	p.AllowURLSchemes("mailto")
	p.AllowAttrs("href").Matching(webLink).OnElements("a")
	p.RequireNoFollowOnLinks(true)
	p.RequireNoReferrerOnLinks(true)
	p.AddTargetBlankToFullyQualifiedLinks(true)

	p.AllowAttrs("alt").Matching(bluemonday.Paragraph).OnElements("img")
	p.AllowAttrs("width", "height").Matching(bluemonday.NumberOrPercent).OnElements("img")
	p.AllowAttrs("src").Matching(dataImage).OnElements("img")
	p.AllowURLSchemeWithCustomPolicy("data", func(u *url.URL) bool {
		// Only reached for img src (hrefs must match webLink first); check the payload decodes.
		if u.RawQuery != "" || u.Fragment != "" || !dataImage.MatchString(u.String()) {
			return false
		}
		_, payload, _ := strings.Cut(u.Opaque, ",")
		_, err := base64.StdEncoding.DecodeString(payload)
		return err == nil
	})
	return p
}
