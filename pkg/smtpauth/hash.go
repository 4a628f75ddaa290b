// Package smtpauth holds what inbound SMTP AUTH needs that is not the SMTP
// dialog itself: the users of the "users" policy key (names, bcrypt or
// argon2id password hashes, the envelope senders each may use), a Verifier
// that checks a password in the same time whether or not the user exists, a
// per-client FailureBudget (N failed AUTH attempts, then 421 4.7.0 and
// close), and the log line fail2ban matches.
//
// Plain-text passwords are never accepted in the users file; hashes are
// computed by mailfwdctl on the operator's machine (Hash).
package smtpauth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Bounds on the parameters a users file may carry. A hostile or mistaken
// file must not make one AUTH attempt cost a gigabyte or a minute.
const (
	MinBcryptCost     = 10
	MaxBcryptCost     = 15
	MaxArgon2Memory   = 256 << 10 // KiB (256 MiB)
	MinArgon2Memory   = 8 << 10   // KiB (8 MiB)
	MaxArgon2Time     = 16
	MaxArgon2Threads  = 16
	MinArgon2KeyLen   = 16
	MaxArgon2KeyLen   = 64
	MinArgon2SaltLen  = 8
	MaxArgon2SaltLen  = 64
	maxPasswordLength = 1024 // longer passwords are refused before hashing
)

// Default parameters of Hash: argon2id with the RFC 9106 second
// recommended option (64 MiB, 3 passes), 4 lanes.
var DefaultArgon2 = Argon2Params{Memory: 64 << 10, Time: 3, Threads: 4, KeyLen: 32, SaltLen: 16}

// bcryptCost is the cost of Hash's bcrypt hashes (a variable for tests).
var bcryptCost = 12

// Algorithm names a password hash scheme.
type Algorithm string

const (
	Bcrypt   Algorithm = "bcrypt"
	Argon2id Algorithm = "argon2id"
)

// Argon2Params are the parameters of an argon2id hash (memory in KiB).
type Argon2Params struct {
	Memory  uint32
	Time    uint32
	Threads uint8
	KeyLen  uint32
	SaltLen uint32
}

// PasswordHash is a parsed, checked hash from a users file.
type PasswordHash struct {
	Algorithm Algorithm
	// Encoded is the hash as written in the file (modular crypt format:
	// "$2b$12$…" or "$argon2id$v=19$m=65536,t=3,p=4$salt$key").
	Encoded string

	cost   int // bcrypt
	argon  Argon2Params
	salt   []byte
	key    []byte
	bcrypt []byte
}

// ErrPlainText is returned by ParseHash for anything that is not one of the
// accepted hash formats, most likely a plain-text password.
var ErrPlainText = errors.New("not a bcrypt ($2b$…) or argon2id ($argon2id$…) hash; plain-text passwords are refused (set it with: mailfwdctl users passwd NAME)")

// ParseHash checks an encoded hash. Only bcrypt ($2a$, $2b$, $2y$) and
// argon2id (version 19) with parameters inside the bounds above are accepted.
func ParseHash(s string) (PasswordHash, error) {
	switch {
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		cost, err := bcrypt.Cost([]byte(s))
		if err != nil || len(s) != 60 {
			return PasswordHash{}, fmt.Errorf("malformed bcrypt hash")
		}
		if cost < MinBcryptCost || cost > MaxBcryptCost {
			return PasswordHash{}, fmt.Errorf("bcrypt cost %d outside %d..%d", cost, MinBcryptCost, MaxBcryptCost)
		}
		return PasswordHash{Algorithm: Bcrypt, Encoded: s, cost: cost, bcrypt: []byte(s)}, nil
	case strings.HasPrefix(s, "$argon2id$"):
		return parseArgon2id(s)
	case strings.HasPrefix(s, "$argon2i$"), strings.HasPrefix(s, "$argon2d$"):
		return PasswordHash{}, errors.New("only argon2id is accepted, not argon2i or argon2d")
	}
	return PasswordHash{}, ErrPlainText
}

func parseArgon2id(s string) (PasswordHash, error) {
	bad := func(why string) (PasswordHash, error) {
		return PasswordHash{}, fmt.Errorf("malformed argon2id hash: %s (want $argon2id$v=19$m=KiB,t=N,p=N$salt$key, base64 without padding)", why)
	}
	parts := strings.Split(s, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, key
	if len(parts) != 6 {
		return bad("wrong number of $ fields")
	}
	if parts[2] != "v=19" {
		return bad("version must be v=19")
	}
	var p Argon2Params
	seen := map[string]bool{}
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || seen[k] {
			return bad("parameters")
		}
		seen[k] = true
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return bad("parameter " + k)
		}
		switch k {
		case "m":
			p.Memory = uint32(n)
		case "t":
			p.Time = uint32(n)
		case "p":
			if n > 255 {
				return bad("p too large")
			}
			p.Threads = uint8(n)
		default:
			return bad("unknown parameter " + k)
		}
	}
	if !seen["m"] || !seen["t"] || !seen["p"] {
		return bad("m, t and p are required")
	}
	salt, err := base64.RawStdEncoding.Strict().DecodeString(parts[4])
	if err != nil {
		return bad("salt is not base64")
	}
	key, err := base64.RawStdEncoding.Strict().DecodeString(parts[5])
	if err != nil {
		return bad("key is not base64")
	}
	p.KeyLen, p.SaltLen = uint32(len(key)), uint32(len(salt))
	switch {
	case p.Memory < MinArgon2Memory || p.Memory > MaxArgon2Memory:
		return PasswordHash{}, fmt.Errorf("argon2id memory %d KiB outside %d..%d", p.Memory, MinArgon2Memory, MaxArgon2Memory)
	case p.Time < 1 || p.Time > MaxArgon2Time:
		return PasswordHash{}, fmt.Errorf("argon2id time %d outside 1..%d", p.Time, MaxArgon2Time)
	case p.Threads < 1 || p.Threads > MaxArgon2Threads:
		return PasswordHash{}, fmt.Errorf("argon2id parallelism %d outside 1..%d", p.Threads, MaxArgon2Threads)
	case p.KeyLen < MinArgon2KeyLen || p.KeyLen > MaxArgon2KeyLen:
		return PasswordHash{}, fmt.Errorf("argon2id key length %d outside %d..%d", p.KeyLen, MinArgon2KeyLen, MaxArgon2KeyLen)
	case p.SaltLen < MinArgon2SaltLen || p.SaltLen > MaxArgon2SaltLen:
		return PasswordHash{}, fmt.Errorf("argon2id salt length %d outside %d..%d", p.SaltLen, MinArgon2SaltLen, MaxArgon2SaltLen)
	}
	return PasswordHash{Algorithm: Argon2id, Encoded: s, argon: p, salt: salt, key: key}, nil
}

// Check reports whether password matches; the comparison is constant-time.
func (h PasswordHash) Check(password string) bool {
	if len(password) > maxPasswordLength {
		// Still spend the time, so the length does not show.
		password = password[:maxPasswordLength]
		h.check(password)
		return false
	}
	return h.check(password)
}

func (h PasswordHash) check(password string) bool {
	switch h.Algorithm {
	case Bcrypt:
		// bcrypt only looks at the first 72 bytes; GenerateFromPassword
		// refuses longer ones, so a hash from Hash never has that ambiguity.
		if len(password) > 72 {
			_ = bcrypt.CompareHashAndPassword(h.bcrypt, []byte(password[:72]))
			return false
		}
		return bcrypt.CompareHashAndPassword(h.bcrypt, []byte(password)) == nil
	case Argon2id:
		k := argon2.IDKey([]byte(password), h.salt, h.argon.Time, h.argon.Memory, h.argon.Threads, h.argon.KeyLen)
		return subtle.ConstantTimeCompare(k, h.key) == 1
	}
	return false
}

// costKey is equal for hashes that take the same work to check.
func (h PasswordHash) costKey() string {
	if h.Algorithm == Bcrypt {
		return fmt.Sprintf("bcrypt/%d", h.cost)
	}
	a := h.argon
	return fmt.Sprintf("argon2id/%d/%d/%d/%d/%d", a.Memory, a.Time, a.Threads, a.KeyLen, a.SaltLen)
}

// Hash hashes password with alg (argon2id with DefaultArgon2, or bcrypt at
// cost 12) for a users file line. It is what mailfwdctl runs client-side.
func Hash(alg Algorithm, password string) (string, error) {
	if password == "" {
		return "", errors.New("empty password")
	}
	if len(password) > maxPasswordLength {
		return "", fmt.Errorf("password longer than %d bytes", maxPasswordLength)
	}
	switch alg {
	case Bcrypt:
		if len(password) > 72 {
			return "", errors.New("bcrypt uses only the first 72 bytes of a password; use argon2id for longer ones")
		}
		b, err := bcrypt.GenerateFromPassword([]byte(password), bcryptCost)
		return string(b), err
	case Argon2id, "":
		return hashArgon2id(password, DefaultArgon2)
	}
	return "", fmt.Errorf("unknown hash algorithm %q (argon2id or bcrypt)", alg)
}

func hashArgon2id(password string, p Argon2Params) (string, error) {
	salt := make([]byte, p.SaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)
	return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", p.Memory, p.Time, p.Threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

// dummyFor returns a hash with the same cost as h, of a random password, for
// the unknown-user path.
func dummyFor(h PasswordHash) PasswordHash {
	var pw [24]byte
	_, _ = rand.Read(pw[:])
	secret := base64.RawStdEncoding.EncodeToString(pw[:])
	var enc string
	if h.Algorithm == Bcrypt {
		b, err := bcrypt.GenerateFromPassword([]byte(secret), h.cost)
		if err != nil {
			panic(err) // cost was checked by ParseHash
		}
		enc = string(b)
	} else {
		var err error
		if enc, err = hashArgon2id(secret, h.argon); err != nil {
			panic(err)
		}
	}
	d, err := ParseHash(enc)
	if err != nil {
		panic(err)
	}
	return d
}

// HashArgon2id hashes with explicit parameters (checked against the bounds
// ParseHash enforces).
func HashArgon2id(password string, p Argon2Params) (string, error) {
	enc, err := hashArgon2id(password, p)
	if err != nil {
		return "", err
	}
	if _, err := ParseHash(enc); err != nil {
		return "", err
	}
	return enc, nil
}

// HashBcrypt hashes with an explicit cost (MinBcryptCost..MaxBcryptCost).
func HashBcrypt(password string, cost int) (string, error) {
	if cost < MinBcryptCost || cost > MaxBcryptCost {
		return "", fmt.Errorf("bcrypt cost %d outside %d..%d", cost, MinBcryptCost, MaxBcryptCost)
	}
	if len(password) > 72 {
		return "", errors.New("bcrypt uses only the first 72 bytes of a password; use argon2id for longer ones")
	}
	b, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	return string(b), err
}
