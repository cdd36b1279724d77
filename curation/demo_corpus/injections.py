"""The demo corpus's injections: near-copies, hard negatives, boilerplate, URL variants, PII and
other languages, each recorded in truth.json so the stages can be scored.
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from curation.dedup.near_copies import edit_words
from curation.dedup.similarity import text_jaccard
from curation.demo_corpus.sources import Doc
from curation.urls import canonicalize_url

# ----------------------------------------------------------------------------- injected text

BOILERPLATE = (
    "This website uses cookies to ensure you get the best experience on our website.",
    "By continuing to browse the site, you are agreeing to our use of cookies.",
    "All rights reserved.",
    "Share this page on Facebook, Twitter, LinkedIn or by email.",
    "Sign up for our newsletter to get the latest updates delivered to your inbox.",
    "Click here to accept all cookies and continue to the website.",
    "Skip to main content and use the navigation menu to browse all sections.",
    "This page was last edited on 12 March 2024, at 14:05.",
    "Let us know whether this page was helpful by leaving feedback below.",
    "Please enable JavaScript in your browser settings to view this content.",
    "Read our privacy policy to learn how we collect and use your personal data.",
)

# (lang, url, paragraph): written for this corpus in a plain, public-domain style.
LANGUAGE_DOCS = (
    ("de", "https://www.stadtanzeiger-online.de/leben/herbst-in-deutschland",
     "Der Herbst ist in vielen Teilen Deutschlands die schönste Jahreszeit. Die Blätter der Bäume färben sich gelb "
     "und rot, und an klaren Tagen kann man weit über das Land sehen. Viele Familien nutzen die Wochenenden für lange "
     "Spaziergänge im Wald. Am Abend wird es früh dunkel, und in den Häusern werden die ersten Kerzen angezündet."),
    ("de", "https://www.stadtanzeiger-online.de/lokales/bibliothek-oeffnungszeiten",
     "Die Stadtbibliothek hat ihre Öffnungszeiten erweitert. Ab dem kommenden Monat ist sie auch am Samstagnachmittag "
     "geöffnet. Neben Büchern können Besucher Zeitschriften, Hörbücher und Filme ausleihen. Für Schüler gibt es "
     "außerdem einen ruhigen Lesesaal, in dem sie ihre Hausaufgaben machen können."),
    ("de", "https://www.kuechenwissen.de/brot-tradition",
     "Brot hat in Deutschland eine lange Tradition. In fast jedem Ort gibt es eine Bäckerei, die schon früh am Morgen "
     "frische Brötchen verkauft. Besonders beliebt sind Roggenbrot und Vollkornbrot, die lange frisch bleiben. Viele "
     "Bäcker backen ihre Spezialitäten noch nach alten Familienrezepten."),
    ("de", "https://www.reisetipps-bahn.de/ratgeber/fahrkarten",
     "Wer mit der Bahn reist, sollte seine Fahrkarte rechtzeitig kaufen. Die Züge sind am Freitagabend und am Sonntag "
     "oft voll. Eine Sitzplatzreservierung kostet nur wenig und erspart viel Ärger. Während der Fahrt kann man lesen, "
     "arbeiten oder einfach aus dem Fenster schauen."),
    ("fr", "https://www.journal-du-quartier.fr/vie-locale/marche-du-samedi",
     "Le marché du samedi matin est l'un des moments préférés des habitants du quartier. On y trouve des légumes de "
     "saison, des fromages de la région et du pain encore chaud. Les commerçants connaissent leurs clients et prennent "
     "le temps de discuter avec eux. Vers midi, les terrasses des cafés voisins commencent à se remplir."),
    ("fr", "https://www.journal-du-quartier.fr/ville/plantation-arbres",
     "La ville a décidé de planter plus de deux mille arbres le long de ses avenues principales. Selon le maire, ce "
     "projet doit rendre les rues plus agréables pendant les étés chauds. Les travaux commenceront au printemps et "
     "dureront environ trois ans. Les habitants sont invités à donner leur avis lors d'une réunion publique."),
    ("fr", "https://www.apprendre-facile.fr/conseils/langues-etrangeres",
     "Apprendre une langue étrangère demande de la patience et de la régularité. Il vaut mieux étudier un peu chaque "
     "jour que beaucoup une fois par semaine. Lire des journaux, écouter la radio et parler avec des amis sont "
     "d'excellents moyens de progresser. Avec le temps, les phrases deviennent plus naturelles."),
    ("fr", "https://www.agenda-culturel.fr/expositions/peintres-xixe",
     "Le musée des beaux-arts présente cette année une exposition consacrée aux peintres du dix-neuvième siècle. Plus "
     "de cent tableaux, prêtés par des collections du monde entier, sont réunis pour la première fois. Des visites "
     "guidées sont proposées tous les jours à quatorze heures. L'entrée est gratuite pour les moins de dix-huit ans."),
    ("es", "https://www.diario-costero.es/sociedad/vacaciones-en-la-costa",
     "En verano, muchas familias españolas pasan sus vacaciones en la costa. Las playas del Mediterráneo se llenan de "
     "gente desde la mañana hasta la noche. Por la tarde, cuando el calor es más fuerte, es costumbre descansar a la "
     "sombra. Al anochecer, los paseos marítimos se llenan de vida y de música."),
    ("es", "https://www.cocina-de-casa.es/recetas/tortilla-de-patatas",
     "La receta tradicional de la tortilla de patatas es sencilla, pero requiere paciencia. Primero se fríen las "
     "patatas a fuego lento con un poco de cebolla. Después se mezclan con los huevos batidos y se cuaja todo en la "
     "sartén. Cada familia defiende su propia versión, con o sin cebolla."),
    ("es", "https://www.diario-costero.es/cultura/nuevo-centro-cultural",
     "El ayuntamiento ha abierto un nuevo centro cultural en el barrio antiguo. El edificio, que antes era una fábrica "
     "de tejidos, cuenta ahora con una biblioteca, salas de ensayo y un pequeño teatro. Las actividades están "
     "dirigidas a personas de todas las edades. La inscripción en los talleres es gratuita."),
    ("es", "https://www.vida-sana.es/consejos/caminar-cada-dia",
     "Caminar todos los días es una de las formas más sencillas de cuidar la salud. No hace falta equipo especial ni "
     "mucho tiempo libre. Media hora de paseo a buen ritmo ayuda a mejorar el ánimo y a dormir mejor. Los médicos "
     "recomiendan empezar poco a poco y aumentar la distancia con el tiempo."),
    ("it", "https://www.notizie-cittadine.it/centro-storico-pedonale",
     "Il centro storico della città è chiuso al traffico durante il fine settimana. I residenti e i turisti possono "
     "passeggiare tranquillamente tra le piazze e le vie strette. Molti negozi restano aperti fino a tardi e le "
     "gelaterie sono sempre affollate. La sera, le chiese illuminate offrono uno spettacolo davvero suggestivo."),
    ("it", "https://www.ricette-della-nonna.it/pasta-fatta-in-casa",
     "La pasta fatta in casa richiede pochi ingredienti: farina, uova e un pizzico di sale. L'impasto deve essere "
     "lavorato a lungo, finché diventa liscio ed elastico. Dopo averlo lasciato riposare, si stende con il "
     "mattarello e si taglia nella forma desiderata. Il risultato ripaga sempre la fatica."),
    ("it", "https://www.notizie-cittadine.it/cultura/incontri-con-autore",
     "La biblioteca comunale organizza ogni mese un incontro con un autore. Gli incontri sono aperti a tutti e si "
     "svolgono nella sala grande al primo piano. Dopo la presentazione del libro, il pubblico può fare domande e "
     "chiedere una dedica. Si consiglia di arrivare con qualche minuto di anticipo."),
    ("pt", "https://www.guia-de-lisboa.pt/cidade/colinas-e-miradouros",
     "Lisboa é conhecida pelas suas colinas, pelos elétricos amarelos e pela luz especial do fim da tarde. Muitos "
     "visitantes sobem até aos miradouros para ver o rio Tejo. Nos bairros antigos, as ruas estreitas escondem "
     "pequenas tascas onde se come bem e barato. À noite, ouve-se fado em várias casas da cidade."),
    ("pt", "https://www.jornal-da-vila.pt/educacao/novos-computadores",
     "A escola da vila recebeu novos computadores para a sala de informática. Os alunos poderão agora aprender "
     "programação desde os primeiros anos. Os professores participaram numa formação durante as férias para preparar "
     "as aulas. A direção espera que o projeto seja alargado a outras escolas da região."),
    ("pt", "https://www.sabores-do-brasil.com.br/cafe-no-dia-a-dia",
     "O café faz parte do dia a dia dos brasileiros. Logo pela manhã, o cheiro do café fresco enche as cozinhas. Ao "
     "longo do dia, é comum oferecer um cafezinho às visitas como sinal de hospitalidade. Nas cidades do interior, "
     "muitas famílias ainda torram e moem os grãos em casa."),
    ("nl", "https://www.dagblad-regio.nl/verkeer/fietsen-naar-het-werk",
     "In Nederland gaan veel mensen met de fiets naar hun werk of naar school. Er zijn overal brede fietspaden, en in "
     "de steden staan grote fietsenstallingen bij de stations. Ook bij regen en wind stappen de meeste mensen gewoon "
     "op de fiets. Kinderen leren al heel jong veilig fietsen in het verkeer."),
    ("nl", "https://www.dagblad-regio.nl/gemeente/nieuw-park",
     "De gemeente heeft plannen gemaakt voor een nieuw park aan de rand van de stad. Er komen wandelpaden, een "
     "speeltuin en een grote vijver. Bewoners konden de afgelopen weken hun ideeën insturen via een online formulier. "
     "De bouw begint naar verwachting volgend voorjaar."),
    ("nl", "https://www.uit-in-de-stad.nl/markt-op-zaterdag",
     "Op zaterdag is de markt op het plein altijd druk. Je kunt er verse groenten, kaas, vis en bloemen kopen. Veel "
     "kramen staan er al tientallen jaren en de verkopers kennen hun vaste klanten bij naam. Na het boodschappen doen "
     "drinken veel mensen nog een kop koffie op een terras."),
    ("ru", "https://www.gorodskie-novosti.ru/zhizn/zima-v-moskve",
     "Зимой в Москве рано темнеет, но город не становится менее оживлённым. На улицах зажигаются огни, а в парках "
     "заливают катки. Многие жители после работы идут кататься на коньках или гулять по набережной. В выходные в "
     "театрах и музеях бывает особенно много посетителей."),
    ("ru", "https://www.gorodskie-novosti.ru/kultura/chitalnyj-zal",
     "Городская библиотека открыла новый читальный зал для школьников. Здесь можно бесплатно пользоваться "
     "компьютерами и готовиться к экзаменам. Библиотекари помогают найти нужные книги и статьи. Зал работает каждый "
     "день, кроме воскресенья, с десяти утра до восьми вечера."),
    ("ru", "https://www.dachnye-sovety.ru/leto-na-dache",
     "Летом многие семьи уезжают на дачу. Там они выращивают овощи, ягоды и цветы, а вечером пьют чай на веранде. "
     "Дети целыми днями играют на свежем воздухе и купаются в реке. Для многих горожан дача — это возможность "
     "отдохнуть от шума и суеты."),
    ("zh", "https://www.chengshi-shenghuo.cn/news/spring-park",
     "春天到了，公园里的花都开了。周末的时候，很多家庭带着孩子去公园散步、放风筝。老人们在树下下棋、聊天，年轻人则在湖边跑步。"
     "天气好的时候，整个公园都充满了笑声。"),
    ("zh", "https://www.chengshi-shenghuo.cn/news/library-reopens",
     "这家图书馆上个月重新开放了。馆内增加了新的阅览室和儿童区，还提供免费的无线网络。读者可以在网上预约借书，也可以使用自助借还机。"
     "工作人员表示，开放时间也会延长到晚上九点。"),
    ("zh", "https://www.xuexi-fangfa.cn/articles/learning-languages",
     "学习一门外语需要耐心和坚持。每天花一点时间读书、听广播、和朋友练习对话，比一周只学一次效果更好。"
     "刚开始的时候可能会觉得很难，但是慢慢地就会发现自己的进步。"),
    ("ja", "https://www.kisetsu-dayori.jp/haru/ohanami",
     "春になると、日本各地で桜の花が咲きます。人々は公園や川沿いに集まり、お花見を楽しみます。夜には桜がライトアップされ、"
     "昼間とは違った美しさを見せてくれます。桜の季節はとても短いので、多くの人が毎年この時期を楽しみにしています。"),
    ("ja", "https://www.machi-news.jp/shisetsu/toshokan",
     "駅前に新しい図書館がオープンしました。館内には広い閲覧室や子ども向けのコーナーがあり、無料でインターネットも利用できます。"
     "開館時間は午前九時から午後八時までで、月曜日は休館日です。"),
    ("ja", "https://www.kurashi-no-techo.jp/shoku/asagohan",
     "日本の朝ごはんは、ご飯と味噌汁、焼き魚、漬物などが一般的です。最近はパンとコーヒーで済ませる人も増えていますが、"
     "週末にはゆっくりと和食の朝ごはんを楽しむ家庭も多いです。"),
)

_FIRST = ("James", "Maria", "Wei", "Aisha", "Carlos", "Olivia", "Dmitri", "Priya", "Lucas", "Fatima", "Hannah",
          "Kenji", "Sophie", "Mateo", "Grace", "Omar", "Elena", "Daniel", "Chloe", "Samuel")
_LAST = ("Johnson", "Garcia", "Chen", "Okafor", "Schneider", "Nguyen", "Rossi", "Kowalski", "Patel", "Andersson",
         "Silva", "Kim", "Dubois", "Novak", "Thompson", "Haddad", "Yamamoto", "Fischer", "Martinez", "Brennan")
_MAIL_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "example.org", "northwind-traders.com",
                 "acme-labs.io", "mail.example.com")
_US_AREAS = (212, 305, 312, 415, 503, 617, 702, 713, 206, 404, 512, 720)
# (region, format): '#' is any digit, 'N' a digit 2-9 (numbering plans forbid a leading 0/1 there).
_PHONE_FORMATS = (
    ("US", "({area}) N#N-####"), ("US", "{area}-N#N-####"), ("US", "+1 {area} N#N ####"), ("US", "{area}.N#N.####"),
    ("GB", "+44 20 7946 0###"), ("DE", "+49 30 N#######"), ("FR", "+33 1 4# ## ## ##"), ("ES", "+34 91 ### ## ##"),
    ("JP", "+81 3-N###-####"), ("IN", "+91 9#### #####"), ("BR", "+55 11 9####-####"), ("AU", "+61 2 9### ####"),
)
_PUBLIC_OCTETS = (23, 34, 45, 52, 63, 66, 78, 81, 93, 104, 141, 151, 176, 185, 203, 212)
# (country, bank-code alphabet, bank-code length, account digits): BBAN = bank code + digits.
_IBAN_FORMATS = (("DE", "", 0, 18), ("GB", "NWBKBARCLOYDHBUKMIDL", 4, 14), ("NL", "ABNARABOINGBTRIO", 4, 10),
                 ("ES", "", 0, 20))

PII_TEMPLATES = {
    "EMAIL_ADDRESS": ("For questions about this release, write to {EMAIL_ADDRESS}.",
                      "Send bug reports to {EMAIL_ADDRESS} and include the full error message."),
    "PHONE_NUMBER": ("Call our support line at {PHONE_NUMBER} between 9 am and 5 pm.",
                     "For urgent matters, please phone {PHONE_NUMBER}."),
    "US_SSN": ("Employee social security number on file: {US_SSN}.",
               "Please verify the SSN {US_SSN} before processing the claim."),
    "CREDIT_CARD": ("The payment was made with card number {CREDIT_CARD}.",
                    "Card on file: {CREDIT_CARD}."),
    "IP_ADDRESS": ("The request was logged from IP address {IP_ADDRESS}.",
                   "The server at {IP_ADDRESS} did not respond to the health check."),
    "IBAN_CODE": ("Please transfer the registration fee to IBAN {IBAN_CODE}.",
                  "Refunds are paid to the account {IBAN_CODE}."),
    "PERSON": ("This section was reviewed by {PERSON} before the last release.",
               "Thanks to {PERSON} for reporting the issue and testing the fix.",
               "Questions? Contact {PERSON} at {EMAIL_ADDRESS} or {PHONE_NUMBER}."),
}


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def luhn_check_digit(payload: str) -> str:
    """The digit that makes `payload + digit` pass the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def iban_check_digits(country: str, bban: str) -> str:
    """ISO 13616 check digits: 98 - (BBAN + country + '00' as a number) mod 97."""
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


def _fake_email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST).lower(), rng.choice(_LAST).lower()
    local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randint(1, 99)}"))
    return f"{local}@{rng.choice(_MAIL_DOMAINS)}"


def _fake_phone(rng: random.Random) -> tuple[str, str]:
    region, fmt = rng.choice(_PHONE_FORMATS)
    fmt = fmt.replace("{area}", str(rng.choice(_US_AREAS)))
    digit = {"#": "0123456789", "N": "23456789"}
    return "".join(rng.choice(digit[c]) if c in digit else c for c in fmt), region


def _fake_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _fake_card(rng: random.Random) -> tuple[str, str]:
    brand, prefix, length = rng.choice((("visa", "4", 16), ("mastercard", str(rng.randint(51, 55)), 16),
                                        ("amex", rng.choice(("34", "37")), 15), ("discover", "6011", 16)))
    payload = prefix + _digits(rng, length - len(prefix) - 1)
    number = payload + luhn_check_digit(payload)
    sep = rng.choice((" ", "-", ""))
    groups = (4, 6, 5) if length == 15 else (4, 4, 4, 4)
    cuts, pos = [], 0
    for g in groups:
        cuts.append(number[pos:pos + g])
        pos += g
    return sep.join(cuts), brand


def _fake_ip(rng: random.Random) -> str:
    return f"{rng.choice(_PUBLIC_OCTETS)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _fake_iban(rng: random.Random) -> tuple[str, str]:
    country, banks, bank_len, n_digits = rng.choice(_IBAN_FORMATS)
    bank = ""
    if bank_len:
        i = rng.randrange(len(banks) // bank_len) * bank_len
        bank = banks[i:i + bank_len]
    bban = bank + _digits(rng, n_digits)
    compact = country + iban_check_digits(country, bban) + bban
    if rng.random() < 0.5:
        return compact, country
    return " ".join(compact[i:i + 4] for i in range(0, len(compact), 4)), country


def _fake_value(kind: str, rng: random.Random) -> tuple[str, str]:
    """(value, detail) for one PII type; detail is the region, brand or country when it has one."""
    if kind == "EMAIL_ADDRESS":
        return _fake_email(rng), ""
    if kind == "PHONE_NUMBER":
        return _fake_phone(rng)
    if kind == "US_SSN":
        return _fake_ssn(rng), ""
    if kind == "CREDIT_CARD":
        return _fake_card(rng)
    if kind == "IP_ADDRESS":
        return _fake_ip(rng), ""
    if kind == "IBAN_CODE":
        return _fake_iban(rng)
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}", ""


_FIELD = re.compile(r"\{([A-Z_]+)\}")


def _fill_template(template: str, rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    """The sentence and its PII items, with spans relative to the sentence."""
    out, items, pos = [], [], 0
    length = 0
    for m in _FIELD.finditer(template):
        out.append(template[pos:m.start()])
        length += m.start() - pos
        value, detail = _fake_value(m.group(1), rng)
        items.append({"type": m.group(1), "value": value, "start": length, "end": length + len(value), "detail": detail})
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(template[pos:])
    return "".join(out), items


# ----------------------------------------------------------------------------- edits

# ----------------------------------------------------------------------------- URLs

_MIRRORS = ("mirror.example-archive.net", "cache.example-search.com", "docs-copy.example.org")
_FRAGMENTS = ("top", "readme", "description", "section-2", "license")
URL_VARIANT_KINDS = ("scheme", "host_case", "default_port", "trailing_slash", "fragment", "tracking")


def _mirror_url(url: str | None, mirror: str) -> str | None:
    """Where a scraped copy of the page at `url` lives: another host, the original's path."""
    if url is None:
        return None
    parts = urlsplit(url)
    return f"https://{mirror}/{parts.hostname}{parts.path}"


def _url_variant(url: str, kinds: list[str], rng: random.Random) -> str:
    parts = urlsplit(url)
    scheme, host, path, query, fragment = parts.scheme, parts.hostname or "", parts.path, parts.query, ""
    port = ""
    if "scheme" in kinds:
        scheme = "http" if scheme == "https" else "https"
    if "host_case" in kinds:
        letters = [i for i, c in enumerate(host) if c.isalpha()]
        up = set(rng.sample(letters, max(1, len(letters) // 3)))
        host = "".join(c.upper() if i in up else c for i, c in enumerate(host))
    if "default_port" in kinds:
        port = ":443" if scheme == "https" else ":80"
    if "trailing_slash" in kinds:
        path = path.rstrip("/") if path.endswith("/") and path != "/" else path + "/"
    if "fragment" in kinds:
        fragment = rng.choice(_FRAGMENTS)
    if "tracking" in kinds:
        params = rng.choice((
            ["utm_source=newsletter", "utm_medium=email", f"utm_campaign=spring{rng.randint(2019, 2025)}"],
            ["utm_source=twitter", "utm_medium=social"],
            [f"fbclid=IwAR{rng.getrandbits(96):024x}"],
            [f"gclid=Cj0KCQ{rng.getrandbits(80):020x}"],
        ))
        query = "&".join(([query] if query else []) + params)
    return urlunsplit((scheme, host + port, path, query, fragment))


# ----------------------------------------------------------------------------- injections

def _plant(doc: Doc, inserts: list[tuple[str, list[dict[str, Any]]]], rng: random.Random) -> list[tuple[int, dict]]:
    """Insert each sentence as its own paragraph of `doc`; returns (index into `inserts`, item).

    `inserts` holds (sentence, items with spans relative to the sentence); the returned items
    carry absolute `start`/`end` in the new `doc.text`.
    """
    text = doc.text
    # Paragraph starts: offset 0 and just after every blank line. End of text is a footer.
    starts = [0] + [m.end() for m in re.finditer(r"\n\n+", text)] + [len(text)]
    placed = sorted(((rng.choice(starts), k) for k in range(len(inserts))))
    pieces, out_items, prev, offset = [], [], 0, 0
    for pos, k in placed:
        sentence, items = inserts[k]
        pieces.append(text[prev:pos])
        offset += pos - prev
        prefix, suffix = ("\n\n", "") if pos == len(text) else ("", "\n\n")
        pieces.append(prefix + sentence + suffix)
        base = offset + len(prefix)
        for item in items:
            out_items.append((k, {**item, "start": base + item["start"], "end": base + item["end"]}))
        offset += len(prefix) + len(sentence) + len(suffix)
        prev = pos
    pieces.append(text[prev:])
    doc.text = "".join(pieces)
    return out_items


def _count(fraction: float, n: int, minimum: int) -> int:
    return max(minimum, round(fraction * n))


def inject(base: list[Doc], seed: int) -> tuple[list[Doc], dict[str, Any]]:
    """Plant sentences and PII in some docs, add copies and foreign-language docs; the truth."""
    rng = random.Random(f"{seed}:inject")
    n = len(base)
    order = list(range(n))
    rng.shuffle(order)
    used: set[int] = set()

    def take(count: int, ok: Callable[[Doc], bool]) -> list[Doc]:
        picked = []
        for i in order:
            if len(picked) == count:
                break
            if i not in used and ok(base[i]):
                used.add(i)
                picked.append(base[i])
        return picked

    new: list[Doc] = []
    truth: dict[str, Any] = {}
    text_counts: dict[str, int] = {}
    for d in base:
        text_counts[d.text] = text_counts.get(d.text, 0) + 1

    def unique(d: Doc) -> bool:  # a copy of a natural duplicate would be ambiguous truth
        return text_counts[d.text] == 1

    def n_words(d: Doc) -> int:
        return len(d.text.split())

    def prose(d: Doc) -> bool:
        return d.domain in ("web", "books")

    # Near duplicates: one or two copies per original, levels in rotation.
    n_copies = _count(0.02, n, 6)
    originals = take(n_copies, lambda d: unique(d) and 80 <= n_words(d) and len(d.text) <= 100_000)
    levels = ("exact", "light", "heavy")
    groups, made = [], 0
    for g, original in enumerate(originals):
        if made >= n_copies:
            break
        copies = []
        n_group = 2 if rng.random() < 0.25 and made + 2 <= n_copies else 1
        for mirror in rng.sample(_MIRRORS, n_group):  # one mirror per copy: copies' URLs differ
            level = levels[made % 3]
            made += 1
            if level == "exact":
                text, frac = original.text, 0.0
            else:
                lo, hi = (0.02, 0.05) if level == "light" else (0.20, 0.30)
                text, frac = edit_words(original.text, rng.uniform(lo, hi), rng, in_runs=level == "heavy")
                if text == original.text:  # every op was a no-op: force one visible edit
                    text += " ."
            copy = Doc(f"{original.domain}-neardup-{made:06d}", text, _mirror_url(original.url, mirror), original.domain,
                       {**original.metadata, "injection": {"kind": "near_duplicate", "of": original.id, "level": level}})
            new.append(copy)
            copies.append({"id": copy.id, "level": level, "edit_fraction": round(frac, 4),
                           "word_5gram_jaccard": round(text_jaccard(original.text, text), 4)})
        groups.append({"group": f"nd-{g:05d}", "original": original.id, "copies": copies})
    spare = {d.id for d in originals[len(groups):]}  # picked but not needed: free for other roles
    used.difference_update(i for i in range(n) if base[i].id in spare)
    truth["near_duplicates"] = groups

    # URL variants: exact copies under URLs that canonicalise to the original's.
    url_groups, n_variants = [], 0
    n_url = _count(0.005, n, 3)
    for g, original in enumerate(take(n_url, lambda d: d.url is not None and unique(d))):
        variants, seen = [], {original.url}
        for _ in range(rng.randint(1, 3)):
            kinds = sorted(rng.sample(URL_VARIANT_KINDS, rng.randint(1, 3)), key=URL_VARIANT_KINDS.index)
            url = _url_variant(original.url, kinds, rng)
            if url in seen:
                continue
            seen.add(url)
            n_variants += 1
            copy = Doc(f"{original.domain}-urlvariant-{n_variants:06d}", original.text, url, original.domain,
                       {**original.metadata, "injection": {"kind": "url_variant", "of": original.id, "kinds": kinds}})
            new.append(copy)
            variants.append({"id": copy.id, "url": url, "kinds": kinds})
        if variants:
            url_groups.append({"group": f"url-{g:05d}", "original_id": original.id, "original_url": original.url,
                               "canonical_url": canonicalize_url(original.url), "variants": variants})
    truth["url_variants"] = url_groups

    # Unrelated docs of one topic: hard negatives (low 5-gram overlap, same subject).
    by_topic: dict[tuple[str, str], list[Doc]] = {}
    for i in order:
        d = base[i]
        if i not in used and unique(d) and n_words(d) >= 80:
            by_topic.setdefault((d.domain, d.metadata["topic"]), []).append(d)
    pairs = []
    topics = sorted(k for k, v in by_topic.items() if len(v) >= 2)
    rng.shuffle(topics)
    want = _count(0.005, n, 3)
    for key in topics * 2:  # a second pass lets big topics give a second pair
        if len(pairs) == want:
            break
        pool = [d for d in by_topic[key] if d.id not in {x for p in pairs for x in (p["a"], p["b"])}]
        for a, b in zip(pool[0::2], pool[1::2]):
            sim = text_jaccard(a.text, b.text)
            if sim < 0.1:
                pairs.append({"a": a.id, "b": b.id, "domain": key[0], "topic": key[1], "word_5gram_jaccard": round(sim, 4)})
                break
    for p in pairs:
        used.update(i for i in range(n) if base[i].id in (p["a"], p["b"]))
    truth["not_duplicates"] = pairs

    # Boilerplate sentences and PII, planted in web/books docs that nothing copies.
    n_prose = sum(1 for d in base if prose(d))
    occurrences: dict[str, list[dict[str, Any]]] = {s: [] for s in BOILERPLATE}
    slot = 0
    for doc in take(_count(0.05, n_prose, 2 * len(BOILERPLATE)), prose):  # each sentence twice or more
        inserts = []
        for _ in range(rng.randint(1, 2)):
            sentence = BOILERPLATE[slot % len(BOILERPLATE)]  # rotation: every sentence lands in many docs
            inserts.append((sentence, [{"start": 0, "end": len(sentence)}]))
            slot += 1
        for k, item in _plant(doc, inserts, rng):
            occurrences[inserts[k][0]].append({"doc_id": doc.id, "start": item["start"], "end": item["end"]})
        doc.metadata["injection"] = {"kind": "planted", "repeated_sentences": len(inserts)}
    truth["repeated_sentences"] = [{"sentence": s, "occurrences": occ} for s, occ in occurrences.items() if occ]

    pii_items = []
    pii_types = list(PII_TEMPLATES)
    for j, doc in enumerate(take(_count(0.03, n_prose, len(pii_types)), prose)):
        inserts = []
        for m in range(rng.randint(1, 2)):
            kind = pii_types[(j + m * 3) % len(pii_types)]
            inserts.append(_fill_template(rng.choice(PII_TEMPLATES[kind]), rng))
        for _, item in _plant(doc, inserts, rng):
            pii_items.append({"doc_id": doc.id, **item})
        doc.metadata["injection"] = {"kind": "planted", "pii": sum(len(items) for _, items in inserts)}
    truth["pii"] = pii_items

    # Other languages: short paragraphs, domain web.
    langs = []
    for k, (lang, url, text) in enumerate(LANGUAGE_DOCS):
        doc = Doc(f"web-lang-{k:06d}", text, url, "web",
                  {"source": "inline", "path": "curation/demo_corpus.py", "license": "CC0-1.0", "topic": f"lang/{lang}",
                   "injection": {"kind": "language", "lang": lang}})
        new.append(doc)
        langs.append({"id": doc.id, "lang": lang})
    truth["languages"] = langs
    return base + new, truth
