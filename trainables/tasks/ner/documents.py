"""Synthetic OCR text of European identity documents, with the 9 entities each one carries.

Real ID data cannot be shipped, so documents are composed from hand-written tables of issuing
countries, languages, field labels, names, places and document-number patterns:

- types: passports, identity cards, residence permits, driving licences (EU numbered fields);
- issuers: Germany, Austria, France, Romania, the United Kingdom, Italy, Spain; labels in the
  issuer's language, often followed by English and French ones, as on real documents;
- dates in each country's printed styles; machine-readable zones (TD3 on passports, TD1 on
  cards and permits) with real ICAO check digits;
- OCR noise: confused characters in labels, headers and the MRZ, labels and values broken onto
  separate lines, stray fragments. Entity values themselves are printed intact, so the labels
  are exactly what the text shows;
- a field the document type does not carry (a driving licence's nationality, a residence
  permit's place of birth) is absent from both the text and the labels.

DOCUMENT_TYPE and ISSUING_COUNTRY are labelled with canonical English names ("passport",
"Germany"), since documents print them in many languages or only imply them.
"""

import datetime
import random
import unicodedata

from trainables.tasks.ner.task import ENTITIES

LABELS = {
    "de": {
        "LAST_NAME": "Name",
        "GIVEN_NAME": "Vornamen",
        "NATIONALITY": "Staatsangehörigkeit",
        "BIRTH_DATE": "Geburtstag",
        "BIRTH_PLACE": "Geburtsort",
        "EXPIRY_DATE": "Gültig bis",
        "DOCUMENT_NUMBER": "Dokumentennummer",
        "SEX": "Geschlecht",
        "ISSUE_DATE": "Ausstellungsdatum",
        "AUTHORITY": "Behörde",
    },
    "en": {
        "LAST_NAME": "Surname",
        "GIVEN_NAME": "Given names",
        "NATIONALITY": "Nationality",
        "BIRTH_DATE": "Date of birth",
        "BIRTH_PLACE": "Place of birth",
        "EXPIRY_DATE": "Date of expiry",
        "DOCUMENT_NUMBER": "Document No.",
        "SEX": "Sex",
        "ISSUE_DATE": "Date of issue",
        "AUTHORITY": "Authority",
    },
    "fr": {
        "LAST_NAME": "Nom",
        "GIVEN_NAME": "Prénoms",
        "NATIONALITY": "Nationalité",
        "BIRTH_DATE": "Date de naissance",
        "BIRTH_PLACE": "Lieu de naissance",
        "EXPIRY_DATE": "Date d'expiration",
        "DOCUMENT_NUMBER": "N° du document",
        "SEX": "Sexe",
        "ISSUE_DATE": "Date de délivrance",
        "AUTHORITY": "Autorité",
    },
    "ro": {
        "LAST_NAME": "Nume",
        "GIVEN_NAME": "Prenume",
        "NATIONALITY": "Cetățenie",
        "BIRTH_DATE": "Data nașterii",
        "BIRTH_PLACE": "Locul nașterii",
        "EXPIRY_DATE": "Data expirării",
        "DOCUMENT_NUMBER": "Nr. document",
        "SEX": "Sex",
        "ISSUE_DATE": "Data emiterii",
        "AUTHORITY": "Autoritatea",
    },
    "it": {
        "LAST_NAME": "Cognome",
        "GIVEN_NAME": "Nome",
        "NATIONALITY": "Cittadinanza",
        "BIRTH_DATE": "Data di nascita",
        "BIRTH_PLACE": "Luogo di nascita",
        "EXPIRY_DATE": "Scadenza",
        "DOCUMENT_NUMBER": "N. documento",
        "SEX": "Sesso",
        "ISSUE_DATE": "Data di rilascio",
        "AUTHORITY": "Autorità",
    },
    "es": {
        "LAST_NAME": "Apellidos",
        "GIVEN_NAME": "Nombre",
        "NATIONALITY": "Nacionalidad",
        "BIRTH_DATE": "Fecha de nacimiento",
        "BIRTH_PLACE": "Lugar de nacimiento",
        "EXPIRY_DATE": "Fecha de caducidad",
        "DOCUMENT_NUMBER": "Núm. documento",
        "SEX": "Sexo",
        "ISSUE_DATE": "Fecha de expedición",
        "AUTHORITY": "Autoridad",
    },
}

TITLES = {
    "passport": {
        "de": "REISEPASS",
        "en": "PASSPORT",
        "fr": "PASSEPORT",
        "ro": "PAȘAPORT",
        "it": "PASSAPORTO",
        "es": "PASAPORTE",
    },
    "identity card": {
        "de": "PERSONALAUSWEIS",
        "en": "IDENTITY CARD",
        "fr": "CARTE NATIONALE D'IDENTITÉ",
        "ro": "CARTE DE IDENTITATE",
        "it": "CARTA D'IDENTITÀ",
        "es": "DOCUMENTO NACIONAL DE IDENTIDAD",
    },
    "residence permit": {
        "de": "AUFENTHALTSTITEL",
        "en": "RESIDENCE PERMIT",
        "fr": "TITRE DE SÉJOUR",
        "ro": "PERMIS DE ȘEDERE",
        "it": "PERMESSO DI SOGGIORNO",
        "es": "PERMISO DE RESIDENCIA",
    },
    "driving licence": {
        "de": "FÜHRERSCHEIN",
        "en": "DRIVING LICENCE",
        "fr": "PERMIS DE CONDUIRE",
        "ro": "PERMIS DE CONDUCERE",
        "it": "PATENTE DI GUIDA",
        "es": "PERMISO DE CONDUCCIÓN",
    },
}

# Number patterns: L a letter, D a digit, A either; anything else is printed as is.
COUNTRIES = {
    "Germany": {
        "header": "BUNDESREPUBLIK DEUTSCHLAND",
        "language": "de",
        "code": "D",
        "licence_code": "D",
        "nationality": "DEUTSCH",
        "dates": ["%d.%m.%Y"],
        "types": {
            "passport": "LAAAAAAAA",
            "identity card": "LAAAAAAAA",
            "residence permit": "LDDDDDDDD",
            "driving licence": "LDDDAAADADD",
        },
        "places": ["BERLIN", "MÜNCHEN", "HAMBURG", "KÖLN", "LEIPZIG", "DRESDEN", "STUTTGART", "KASSEL"],
        "given": ["Anna", "Lukas", "Sophie", "Maximilian", "Lea", "Jonas", "Marie", "Felix", "Katharina"],
        "last": ["MÜLLER", "SCHMIDT", "SCHNEIDER", "FISCHER", "WEBER", "WAGNER", "BECKER", "HOFFMANN"],
        "authority": ["STADT KÖLN", "LANDESHAUPTSTADT MÜNCHEN", "BEZIRKSAMT MITTE VON BERLIN"],
    },
    "Austria": {
        "header": "REPUBLIK ÖSTERREICH",
        "language": "de",
        "code": "AUT",
        "licence_code": "A",
        "nationality": "ÖSTERREICH",
        "dates": ["%d.%m.%Y"],
        "types": {
            "passport": "LDDDDDDD",
            "identity card": "DDDDDDDD",
            "residence permit": "LDDDDDDD",
            "driving licence": "DDDDDDDD",
        },
        "places": ["WIEN", "GRAZ", "LINZ", "SALZBURG", "INNSBRUCK", "KLAGENFURT"],
        "given": ["Florian", "Johanna", "Matthias", "Theresa", "Stefan", "Magdalena"],
        "last": ["GRUBER", "HUBER", "BAUER", "PICHLER", "STEINER", "MOSER", "MAYER"],
        "authority": ["BH INNSBRUCK", "MAGISTRAT DER STADT WIEN", "LPD STEIERMARK"],
    },
    "France": {
        "header": "RÉPUBLIQUE FRANÇAISE",
        "language": "fr",
        "code": "FRA",
        "licence_code": "F",
        "nationality": "FRANÇAISE",
        "dates": ["%d/%m/%Y", "%d %m %Y"],
        "types": {
            "passport": "DDLLDDDDD",
            "identity card": "AAAAAAAAA",
            "residence permit": "DDDDDDDDDD",
            "driving licence": "DDLLDDDDD",
        },
        "places": ["PARIS", "LYON", "MARSEILLE", "TOULOUSE", "NANTES", "LILLE", "BORDEAUX", "STRASBOURG"],
        "given": ["Camille", "Louis", "Chloé", "Hugo", "Manon", "Julien", "Élodie", "Antoine"],
        "last": ["MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "PETIT", "DURAND", "LEFÈVRE"],
        "authority": ["PRÉFECTURE DE POLICE", "PRÉFECTURE DU RHÔNE", "SOUS-PRÉFECTURE DE BREST"],
    },
    "Romania": {
        "header": "ROMÂNIA",
        "language": "ro",
        "code": "ROU",
        "licence_code": "RO",
        "nationality": "ROMÂNĂ",
        "dates": ["%d.%m.%Y"],
        "types": {
            "passport": "DDDDDDDDD",
            "identity card": "LL DDDDDD",
            "residence permit": "LLDDDDDDD",
            "driving licence": "DDDDDDDDD",
        },
        "places": ["BUCUREȘTI", "CLUJ-NAPOCA", "TIMIȘOARA", "IAȘI", "CONSTANȚA", "BRAȘOV", "SIBIU"],
        "given": ["Andrei", "Ioana", "Mihai", "Elena", "Alexandru", "Maria", "Ștefan"],
        "last": ["POPESCU", "IONESCU", "POPA", "DUMITRESCU", "STAN", "STOICA", "GHEORGHE"],
        "authority": ["SPCLEP SECTOR 3", "SPCEP CLUJ", "DGP BUCUREȘTI"],
    },
    "United Kingdom": {
        "header": "UNITED KINGDOM OF GREAT BRITAIN AND NORTHERN IRELAND",
        "language": "en",
        "code": "GBR",
        "licence_code": "UK",
        "nationality": "BRITISH CITIZEN",
        "dates": ["%d %b %Y", "%d/%m/%Y"],
        "types": {
            "passport": "DDDDDDDDD",
            "residence permit": "LLDDDDDDD",
            "driving licence": "LLLLLDDDDDDLLDLL",
        },
        "places": ["LONDON", "MANCHESTER", "LEEDS", "BRISTOL", "GLASGOW", "CARDIFF", "BELFAST"],
        "given": ["Oliver", "Amelia", "George", "Isla", "Harry", "Emily", "Jack", "Grace"],
        "last": ["SMITH", "JONES", "TAYLOR", "BROWN", "WILLIAMS", "WILSON", "EVANS", "WALKER"],
        "authority": ["HMPO", "DVLA", "HOME OFFICE"],
    },
    "Italy": {
        "header": "REPUBBLICA ITALIANA",
        "language": "it",
        "code": "ITA",
        "licence_code": "I",
        "nationality": "ITALIANA",
        "dates": ["%d/%m/%Y", "%d.%m.%Y"],
        "types": {
            "passport": "LLDDDDDDD",
            "identity card": "LLDDDDDLL",
            "residence permit": "LDDDDDDDD",
            "driving licence": "LLDDDDDDDL",
        },
        "places": ["ROMA", "MILANO", "NAPOLI", "TORINO", "BOLOGNA", "FIRENZE"],
        "given": ["Giulia", "Marco", "Francesca", "Luca", "Chiara", "Alessandro"],
        "last": ["ROSSI", "RUSSO", "FERRARI", "ESPOSITO", "BIANCHI", "ROMANO", "COLOMBO"],
        "authority": ["COMUNE DI ROMA", "QUESTURA DI MILANO", "MIT-UCO"],
    },
    "Spain": {
        "header": "REINO DE ESPAÑA",
        "language": "es",
        "code": "ESP",
        "licence_code": "E",
        "nationality": "ESPAÑOLA",
        "dates": ["%d %m %Y", "%d/%m/%Y"],
        "types": {
            "passport": "LLLDDDDDD",
            "identity card": "DDDDDDDDL",
            "residence permit": "LDDDDDDDL",
            "driving licence": "DDDDDDDDL",
        },
        "places": ["MADRID", "BARCELONA", "VALENCIA", "SEVILLA", "ZARAGOZA", "BILBAO"],
        "given": ["Lucía", "Javier", "Carmen", "Pablo", "Elena", "Sergio"],
        "last": ["GARCÍA", "FERNÁNDEZ", "GONZÁLEZ", "RODRÍGUEZ", "LÓPEZ", "MARTÍNEZ", "SÁNCHEZ"],
        "authority": ["DGP MADRID", "DIRECCIÓN GENERAL DE TRÁFICO", "COMISARÍA DE SEVILLA"],
    },
}

# Holders of residence permits come from outside the EU; permits print their ICAO code.
FOREIGN_HOLDERS = {
    "UKR": (["Olena", "Dmytro", "Iryna", "Oleksandr"], ["KOVALENKO", "SHEVCHENKO", "BONDARENKO"]),
    "TUR": (["Emre", "Zeynep", "Mehmet", "Elif"], ["YILMAZ", "KAYA", "DEMİR", "ŞAHİN"]),
    "IND": (["Priya", "Arjun", "Ananya", "Rahul"], ["SHARMA", "PATEL", "REDDY", "IYER"]),
    "BRA": (["João", "Ana", "Lucas", "Beatriz"], ["SILVA", "SANTOS", "OLIVEIRA", "SOUZA"]),
    "USA": (["Emily", "Michael", "Sarah", "David"], ["JOHNSON", "MILLER", "DAVIS", "GARCIA"]),
    "CHN": (["Wei", "Na", "Jun", "Xiu"], ["WANG", "ZHANG", "LIU", "CHEN"]),
    "NGA": (["Chinedu", "Ngozi", "Tunde", "Amaka"], ["OKAFOR", "ADEYEMI", "EZE", "BELLO"]),
}

# A type's own fields; the others are absent from text and labels alike.
CARRIED = {
    "passport": set(ENTITIES),
    "identity card": set(ENTITIES),
    "residence permit": set(ENTITIES) - {"BIRTH_PLACE"},
    "driving licence": set(ENTITIES) - {"NATIONALITY"},
}
VALIDITY_YEARS = {"passport": 10, "identity card": 10, "residence permit": 3, "driving licence": 15}
MRZ_DOCUMENT_CODE = {"passport": "P<", "identity card": "ID", "residence permit": "AR"}
OCR_CONFUSIONS = {"O": "0", "0": "O", "I": "1", "l": "1", "S": "5", "B": "8", "e": "c", "rn": "m", "<": "K"}
STRAY_FRAGMENTS = ["|", "~~", "..", "/ /", "ll", "■", "' ,", "=", ";:", "~_"]
TRANSLITERATION = {"Ä": "AE", "Ö": "OE", "Ü": "UE", "ß": "SS"}


def mrz_name(text: str) -> str:
    """ICAO 9303 transliteration: German umlauts expanded, other diacritics dropped."""
    upper = "".join(TRANSLITERATION.get(char, char) for char in text.upper())
    plain = unicodedata.normalize("NFKD", upper).encode("ascii", "ignore").decode()
    return "".join(char if char.isalnum() else "<" for char in plain)


def check_digit(field: str) -> str:
    weights = (7, 3, 1)
    total = 0
    for position, char in enumerate(field):
        value = int(char) if char.isdigit() else (ord(char) - 55 if char.isalpha() else 0)
        total += value * weights[position % 3]
    return str(total % 10)


def _pad(text: str, width: int) -> str:
    return text[:width].ljust(width, "<")


def mrz_lines(holder: dict, kind: str, country: dict) -> list[str]:
    """TD3 (two lines of 44) for passports, TD1 (three lines of 30) for cards and permits."""
    issuer = _pad(country["code"], 3)
    number = _pad(mrz_name(holder["number"]), 9)
    birth, expiry = holder["birth"].strftime("%y%m%d"), holder["expiry"].strftime("%y%m%d")
    nationality = _pad(holder["nationality_code"], 3)
    names = mrz_name(holder["last"]) + "<<" + mrz_name(holder["given"])
    if kind == "passport":
        optional = "<" * 14
        body = number + check_digit(number) + nationality + birth + check_digit(birth) + holder["sex"]
        body += expiry + check_digit(expiry) + optional + check_digit(optional)
        composite = number + check_digit(number) + birth + check_digit(birth) + expiry + check_digit(expiry)
        return [
            _pad("P<" + issuer + names, 44),
            body + check_digit(composite + optional + check_digit(optional)),
        ]
    optional = "<" * 15
    first = MRZ_DOCUMENT_CODE[kind] + issuer + number + check_digit(number) + optional
    second = (
        birth + check_digit(birth) + holder["sex"] + expiry + check_digit(expiry) + nationality + "<" * 11
    )
    overall = check_digit(first[5:] + second[:7] + second[8:15] + second[18:29])
    return [first, second + overall, _pad(names, 30)]


def _number(pattern: str, rng: random.Random) -> str:
    letters, digits = "CFGHJKLMNPRTVWXYZ", "0123456789"
    pools = {"L": letters, "D": digits, "A": letters + digits}
    return "".join(rng.choice(pools[char]) if char in pools else char for char in pattern)


def _date(rng: random.Random, first_year: int, last_year: int) -> datetime.date:
    start = datetime.date(first_year, 1, 1)
    return start + datetime.timedelta(days=rng.randrange((datetime.date(last_year, 12, 31) - start).days))


def _holder(kind: str, country: dict, rng: random.Random) -> dict:
    if kind == "residence permit":
        nationality_code = rng.choice(sorted(FOREIGN_HOLDERS))
        given_names, last_names = FOREIGN_HOLDERS[nationality_code]
        nationality = nationality_code
    else:
        nationality_code, nationality = _pad(country["code"], 3), country["nationality"]
        given_names, last_names = country["given"], country["last"]
    given = rng.choice(given_names)
    if rng.random() < 0.25:
        given += " " + rng.choice([name for name in given_names if name != given])
    issued = _date(rng, 2016, 2025)
    expiry = issued.replace(year=issued.year + VALIDITY_YEARS[kind]) - datetime.timedelta(days=1)
    date_style = rng.choice(country["dates"])
    return {
        "given": given.upper() if rng.random() < 0.6 else given,
        "last": rng.choice(last_names),
        "nationality": nationality,
        "nationality_code": nationality_code,
        "birth": _date(rng, 1950, 2006),
        "issued": issued,
        "expiry": expiry,
        "place": rng.choice(country["places"]),
        "number": _number(country["types"][kind], rng),
        "sex": rng.choice("MF"),
        "date_style": date_style,
        "authority": rng.choice(country["authority"]),
    }


def _printed_date(date: datetime.date, style: str) -> str:
    return date.strftime(style).upper()


def _label(field: str, languages: list[str]) -> str:
    return " / ".join(LABELS[language][field] for language in languages)


def _noisy(text: str, rng: random.Random, rate: float) -> str:
    for original, confused in OCR_CONFUSIONS.items():
        if original in text and rng.random() < rate:
            position = text.index(original)
            text = text[:position] + confused + text[position + len(original) :]
    return text


def _field_lines(label: str, value: str, rng: random.Random) -> list[str]:
    """A labelled field, the way OCR returns it: on one line, or label and value on two."""
    noisy_label = _noisy(label, rng, 0.15)
    if rng.random() < 0.45:
        return [noisy_label, value]
    return [f"{noisy_label}{rng.choice([': ', ' ', ':  '])}{value}"]


def _visual_zone(kind: str, holder: dict, languages: list[str], rng: random.Random) -> tuple[list[str], dict]:
    date = holder["date_style"]
    values = {
        "LAST_NAME": holder["last"],
        "GIVEN_NAME": holder["given"],
        "NATIONALITY": holder["nationality"],
        "BIRTH_DATE": _printed_date(holder["birth"], date),
        "BIRTH_PLACE": holder["place"],
        "EXPIRY_DATE": _printed_date(holder["expiry"], date),
        "DOCUMENT_NUMBER": holder["number"],
    }
    extras = {
        "SEX": holder["sex"],
        "ISSUE_DATE": _printed_date(holder["issued"], date),
        "AUTHORITY": holder["authority"],
    }
    if kind == "driving licence":
        lines = [
            f"1. {values['LAST_NAME']}",
            f"2. {values['GIVEN_NAME']}",
            f"3. {values['BIRTH_DATE']} {values['BIRTH_PLACE']}",
            f"4a. {extras['ISSUE_DATE']}   4b. {values['EXPIRY_DATE']}",
            f"4c. {_noisy(extras['AUTHORITY'], rng, 0.1)}",
            f"5. {values['DOCUMENT_NUMBER']}",
            f"9. {rng.choice(['AM/B1/B', 'B', 'A2/B/BE', 'AM/B'])}",
        ]
        return lines, {key: value for key, value in values.items() if key != "NATIONALITY"}
    carried = [field for field in values if field in CARRIED[kind]]
    order = ["DOCUMENT_NUMBER", "LAST_NAME", "GIVEN_NAME", "BIRTH_DATE", "SEX", "NATIONALITY", "BIRTH_PLACE"]
    order += ["ISSUE_DATE", "AUTHORITY", "EXPIRY_DATE"]
    lines = []
    for field in order:
        if field in extras:
            lines += _field_lines(_label(field, languages), _noisy(extras[field], rng, 0.1), rng)
        elif field in carried:
            lines += _field_lines(_label(field, languages), values[field], rng)
    return lines, {field: values[field] for field in carried}


def document(index: int, rng: random.Random) -> dict:
    """One document: OCR text, its entities, and what it is (for slicing results)."""
    country_name = rng.choice(sorted(COUNTRIES))
    country = COUNTRIES[country_name]
    kind = rng.choice(sorted(country["types"]))
    holder = _holder(kind, country, rng)
    language = country["language"]
    languages = [language, *[extra for extra in ("en", "fr") if extra != language and rng.random() < 0.6]]
    lines, entities = _visual_zone(kind, holder, languages, rng)
    title = " / ".join(TITLES[kind][lang] for lang in languages[: 1 + (kind == "passport")])
    header = [_noisy(country["header"], rng, 0.2), _noisy(title, rng, 0.2)]
    if kind == "driving licence":
        header.append(country["licence_code"])
    lines = header + lines
    if kind in MRZ_DOCUMENT_CODE and rng.random() < 0.8:
        lines += [_noisy(line, rng, 0.3) for line in mrz_lines(holder, kind, country)]
    for _ in range(rng.randint(0, 3)):
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(STRAY_FRAGMENTS))
    entities |= {"DOCUMENT_TYPE": kind, "ISSUING_COUNTRY": country_name}
    return {
        "id": f"ner-{index:04d}",
        "document_type": kind,
        "country": country_name,
        "text": "\n".join(lines),
        "entities": {field: entities[field] for field in ENTITIES if field in entities},
    }


def generate(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [document(index, rng) for index in range(count)]
