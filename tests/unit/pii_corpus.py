"""A labelled corpus for PII redaction: realistic snippets in 16 languages.

``PII`` holds snippets that carry personal data, each with the values
planted in it (kind, exact text as written) and the event's region hints
(``country``, ``timezone``, browser ``language``) where the widget would have
sent them; ``keep`` lists parts of the same snippet that must survive (a
date, a price next to the phone number). ``LOOKALIKES`` holds snippets that
only look like PII (dates, versions, prices, order ids, coordinates, postal
codes, phone cue words next to non-phones) and must come out byte-identical.

Forms: ``chat`` (a user's message or an agent's answer), ``url`` (page URL or
referrer with a query string), ``title`` (page title or button text),
``json`` (JSON-ish text as it appears in tool results and raw payloads).

Phone numbers are real-format numbers of each region's plan (checked with
``phonenumbers`` when the corpus was written) unless the entry says it is an
unassigned or fictional one: those are only found through their cue word.
The kinds are the ones ``transforms.pii`` redacts in text.
"""
import typing


class Entry(typing.NamedTuple):
    lang: str
    form: str
    text: str
    pii: typing.Tuple[typing.Tuple[str, str], ...] = ()
    hints: typing.Mapping[str, str] = {}
    keep: typing.Tuple[str, ...] = ()


def P(lang, form, text, *pii, keep=(), **hints):
    return Entry(lang, form, text, tuple(pii), dict(hints), tuple(keep))


def L(lang, form, text, **hints):
    return Entry(lang, form, text, (), dict(hints), ())


US = dict(country="US", timezone="America/New_York", language="en-US")
GB = dict(country="GB", timezone="Europe/London", language="en-GB")
IN = dict(country="IN", timezone="Asia/Kolkata", language="en-IN")
DE = dict(country="DE", timezone="Europe/Berlin", language="de-DE")
AT = dict(timezone="Europe/Vienna", language="de-AT")
FR = dict(country="FR", timezone="Europe/Paris", language="fr-FR")
ES = dict(country="ES", timezone="Europe/Madrid", language="es-ES")
MX = dict(timezone="America/Mexico_City", language="es-MX")
BR = dict(country="BR", timezone="America/Sao_Paulo", language="pt-BR")
PT = dict(timezone="Europe/Lisbon", language="pt-PT")
IT = dict(country="IT", timezone="Europe/Rome", language="it-IT")
NL = dict(country="NL", timezone="Europe/Amsterdam", language="nl-NL")
PL = dict(country="PL", timezone="Europe/Warsaw", language="pl-PL")
SE = dict(country="SE", timezone="Europe/Stockholm", language="sv-SE")
TR = dict(country="TR", timezone="Europe/Istanbul", language="tr-TR")
RU = dict(country="RU", timezone="Europe/Moscow", language="ru-RU")
SA = dict(country="SA", timezone="Asia/Riyadh", language="ar-SA")
AE = dict(timezone="Asia/Dubai", language="ar-AE")
JP = dict(country="JP", timezone="Asia/Tokyo", language="ja-JP")
CN = dict(country="CN", timezone="Asia/Shanghai", language="zh-CN")
KR = dict(country="KR", timezone="Asia/Seoul", language="ko-KR")
# Only the browser language, or only the timezone: the weaker hints alone.
LANG_DE = dict(language="de")
TZ_PARIS = dict(timezone="Europe/Paris")
TZ_KOLKATA = dict(timezone="Asia/Kolkata")

PII: typing.List[Entry] = [
    # --- English --------------------------------------------------------------
    P("en", "chat", "Hi, please email me at jane.doe@acme-corp.com with the pricing sheet",
      ("email", "jane.doe@acme-corp.com"), **US),
    P("en", "chat", "Call me on +1 415 555 0132 about the enterprise tier",
      ("phone", "+1 415 555 0132"), **US),
    P("en", "chat", "my cell is (415) 555-0132, text me after 5pm",
      ("phone", "(415) 555-0132"), **US),
    P("en", "chat", "You can reach our office at 212-555-0188 or ops@northwind.io",
      ("phone", "212-555-0188"), ("email", "ops@northwind.io"), **US),
    P("en", "chat", "Phone: 555 0132 (that's my desk line, ask for Tom)",
      ("phone", "555 0132"), **US),
    P("en", "chat", "call me at 555-0199 tomorrow between 10:30 and 12:00",
      ("phone", "555-0199"), keep=("10:30", "12:00"), **US),
    P("en", "chat", "UK mobile 07911 123456, I'm in London until 2024-03-15",
      ("phone", "07911 123456"), keep=("2024-03-15",), **GB),
    P("en", "chat", "best number: 020 7946 0958", ("phone", "020 7946 0958"), **GB),
    P("en", "chat", "mobile 07700 900123 (new SIM)", ("phone", "07700 900123"), **GB),
    P("en", "chat", "Order ORD-2024-118734 went to o.brien+orders@mail.example.co.uk, "
      "please resend", ("email", "o.brien+orders@mail.example.co.uk"),
      keep=("ORD-2024-118734",), **GB),
    P("en", "chat", "my number is 98765 43210, WhatsApp works too", ("phone", "98765 43210"),
      **IN),
    P("en", "chat", "ring me on 9876543210 after lunch", ("phone", "9876543210"), **TZ_KOLKATA),
    P("en", "chat", "Office landline 022 2345 6789, ext 14", ("phone", "022 2345 6789"), **IN),
    P("en", "chat", "Card 4111 1111 1111 1111 exp 09/27 got declined for $1,299.00",
      ("card", "4111 1111 1111 1111"), keep=("$1,299.00",), **US),
    P("en", "chat", "charge the amex 378282246310005 instead", ("card", "378282246310005"), **US),
    P("en", "chat", "mastercard 5105-1051-0510-5100, billing zip 94043",
      ("card", "5105-1051-0510-5100"), keep=("94043",), **US),
    P("en", "chat", "Try 2223 0031 2200 3222, it's the company card",
      ("card", "2223 0031 2200 3222"), **US),
    P("en", "chat", "For the W-9: SSN 078-05-1120", ("ssn", "078-05-1120"), **US),
    P("en", "chat", "social security number 123456789 for the credit check",
      ("ssn", "123456789"), **US),
    P("en", "chat", "our VPN egress is 203.0.113.45, please allow-list it",
      ("ipv4", "203.0.113.45"), **US),
    P("en", "chat", "the webhook calls from 198.51.100.7 fail with a 403",
      ("ipv4", "198.51.100.7"), **GB),
    P("en", "chat", "server at 2001:db8:85a3::8a2e:370:7334 refuses the widget script",
      ("ipv6", "2001:db8:85a3::8a2e:370:7334"), **US),
    P("en", "chat", "wire it to GB82 WEST 1234 5698 7654 32 please",
      ("iban", "GB82 WEST 1234 5698 7654 32"), **GB),
    P("en", "url", "https://shop.example.com/signup?email=jane.doe%40acme-corp.com"
      "&utm_source=newsletter&utm_campaign=spring_launch",
      ("email", "jane.doe%40acme-corp.com"), keep=("utm_campaign=spring_launch",), **US),
    P("en", "url", "https://shop.example.com/contact?name=Tom&phone=%2B1%20415%20555%200132"
      "&ref=ORD-123456789", ("phone", "%2B1%20415%20555%200132"), keep=("ORD-123456789",),
      **US),
    P("en", "url", "https://www.example.com/callback?tel=(212)%20555-0188&slot=2024-06-01",
      ("phone", "(212)%20555-0188"), keep=("slot=2024-06-01",), **US),
    P("en", "url", "/account/verify?user=anna.k%40northwind.io#step=2",
      ("email", "anna.k%40northwind.io"), **US),
    P("en", "title", "Thanks, jane.doe@acme-corp.com - your demo is booked | Example Shop",
      ("email", "jane.doe@acme-corp.com"), **US),
    P("en", "title", "Call 212-555-0188 - Enterprise sales", ("phone", "212-555-0188"), **US),
    P("en", "json", '{"lead": {"email": "m.chen@contoso.com", "phone": "+44 20 7946 0958"}}',
      ("email", "m.chen@contoso.com"), ("phone", "+44 20 7946 0958"), **GB),
    P("en", "json", '{"tool": "crm_lookup", "result": {"contact": "(415) 555-0132", '
      '"since": "2021-04-01"}}', ("phone", "(415) 555-0132"), keep=("2021-04-01",), **US),
    P("en", "json", '{"client_ip": "192.168.10.23", "ua": "Chrome/124.0.6367.91"}',
      ("ipv4", "192.168.10.23"), keep=("Chrome/124.0.6367.91",), **US),
    # --- German ---------------------------------------------------------------
    P("de", "chat", "Bitte schicken Sie das Angebot an jürgen.müller@beispiel.de",
      ("email", "jürgen.müller@beispiel.de"), **DE),
    P("de", "chat", "Sie erreichen mich unter 030 901820, am besten vormittags",
      ("phone", "030 901820"), **DE),
    P("de", "chat", "Meine Handynummer: 0171 1234567", ("phone", "0171 1234567"), **DE),
    P("de", "chat", "Rufen Sie mich bitte unter 089 2190 7654 an", ("phone", "089 2190 7654"),
      **LANG_DE),
    P("de", "chat", "Tel.: 0123 456789 (Zentrale), Fax 0123 456790",
      ("phone", "0123 456789"), ("phone", "0123 456790"), **DE),
    P("de", "chat", "Handy 0151 23456789, Festnetz 030 901820",
      ("phone", "0151 23456789"), ("phone", "030 901820"), **DE),
    P("de", "chat", "Kontakt: kontakt@bücher-schmidt.de oder 0664 1234567",
      ("email", "kontakt@bücher-schmidt.de"), ("phone", "0664 1234567"), **AT),
    P("de", "chat", "Büro Zürich: 044 668 18 00", ("phone", "044 668 18 00"),
      timezone="Europe/Zurich", language="de-CH"),
    P("de", "chat", "Überweisung bitte auf DE89 3704 0044 0532 0130 00, Rechnung vom 15.01.2024",
      ("iban", "DE89 3704 0044 0532 0130 00"), keep=("15.01.2024",), **DE),
    P("de", "chat", "IBAN AT61 1904 3002 3457 3201 für die Rückzahlung",
      ("iban", "AT61 1904 3002 3457 3201"), **AT),
    P("de", "chat", "Kreditkarte 4012 8888 8888 1881 wurde abgelehnt (1.299,00 €)",
      ("card", "4012 8888 8888 1881"), keep=("1.299,00 €",), **DE),
    P("de", "url", "https://shop.example.de/kontakt?email=j%C3%BCrgen.m%C3%BCller%40beispiel.de"
      "&utm_source=google", ("email", "j%C3%BCrgen.m%C3%BCller%40beispiel.de"), **DE),
    P("de", "url", "https://shop.example.de/rueckruf?telefon=030%20901820&zeit=10:00",
      ("phone", "030%20901820"), **DE),
    P("de", "title", "Rückruf an 0171 1234567 bestätigt", ("phone", "0171 1234567"), **DE),
    P("de", "json", '{"kunde": "anna.schäfer@mail.de", "mobil": "0151 23456789"}',
      ("email", "anna.schäfer@mail.de"), ("phone", "0151 23456789"), **DE),
    # --- French ---------------------------------------------------------------
    P("fr", "chat", "Écrivez-moi à françois.dupont@exemple.fr pour le devis",
      ("email", "françois.dupont@exemple.fr"), **FR),
    P("fr", "chat", "Mon portable : 06 12 34 56 78", ("phone", "06 12 34 56 78"), **FR),
    P("fr", "chat", "Appelez-moi au 01 42 68 53 00 entre 14h et 16h",
      ("phone", "01 42 68 53 00"), **FR),
    P("fr", "chat", "tél. 07.81.23.45.67", ("phone", "07.81.23.45.67"), **FR),
    P("fr", "chat", "mon numéro c'est le 0612345678", ("phone", "0612345678"), **TZ_PARIS),
    P("fr", "chat", "Contact : élodie@société.fr", ("email", "élodie@société.fr"), **FR),
    P("fr", "chat", "Virement sur FR14 2004 1010 0505 0001 3M02 606 svp",
      ("iban", "FR14 2004 1010 0505 0001 3M02 606"), **FR),
    P("fr", "chat", "Bureau de Bruxelles : 0470 12 34 56", ("phone", "0470 12 34 56"),
      timezone="Europe/Brussels", language="fr-BE"),
    P("fr", "chat", "Téléphone: 01 23 45 67 89 (standard)", ("phone", "01 23 45 67 89"), **FR),
    P("fr", "url", "https://boutique.example.fr/rappel?tel=06%2012%2034%2056%2078&source=chat",
      ("phone", "06%2012%2034%2056%2078"), **FR),
    P("fr", "title", "Merci françois.dupont@exemple.fr | Boutique",
      ("email", "françois.dupont@exemple.fr"), **FR),
    P("fr", "json", '{"client": {"courriel": "marie.lefèvre@orange.fr", "tel": "06 12 34 56 78"}}',
      ("email", "marie.lefèvre@orange.fr"), ("phone", "06 12 34 56 78"), **FR),
    # --- Spanish --------------------------------------------------------------
    P("es", "chat", "Mi correo es josé.garcía@correo.es, gracias",
      ("email", "josé.garcía@correo.es"), **ES),
    P("es", "chat", "Llámame al 612 345 678 cuando puedas", ("phone", "612 345 678"), **ES),
    P("es", "chat", "Teléfono de la oficina: 91 123 45 67", ("phone", "91 123 45 67"), **ES),
    P("es", "chat", "mi celular es 55 1234 5678", ("phone", "55 1234 5678"), **MX),
    P("es", "chat", "escríbeme a núñez@empresa.mx o al 55 1234 5678",
      ("email", "núñez@empresa.mx"), ("phone", "55 1234 5678"), **MX),
    P("es", "chat", "Tel. 011 4321-5678 (Buenos Aires)", ("phone", "011 4321-5678"),
      timezone="America/Argentina/Buenos_Aires", language="es-AR"),
    P("es", "chat", "IBAN ES91 2100 0418 4502 0005 1332 para el reembolso",
      ("iban", "ES91 2100 0418 4502 0005 1332"), **ES),
    P("es", "chat", "móvil 600 000 000 (es provisional)", ("phone", "600 000 000"), **ES),
    P("es", "url", "https://tienda.example.es/contacto?correo=jos%C3%A9.garc%C3%ADa%40correo.es",
      ("email", "jos%C3%A9.garc%C3%ADa%40correo.es"), **ES),
    P("es", "json", '{"cliente": "lucía.martín@correo.es", "telefono": "612 345 678", '
      '"pedido": "PED-2024-00981"}', ("email", "lucía.martín@correo.es"),
      ("phone", "612 345 678"), keep=("PED-2024-00981",), **ES),
    # --- Portuguese -----------------------------------------------------------
    P("pt", "chat", "Meu e-mail é joão.silva@empresa.com.br", ("email", "joão.silva@empresa.com.br"),
      **BR),
    P("pt", "chat", "Meu celular é (11) 91234-5678", ("phone", "(11) 91234-5678"), **BR),
    P("pt", "chat", "Liga pro escritório: (21) 3456-7890", ("phone", "(21) 3456-7890"), **BR),
    P("pt", "chat", "me chama no zap 11 91234-5678", ("phone", "11 91234-5678"), **BR),
    P("pt", "chat", "O meu telemóvel é 912 345 678", ("phone", "912 345 678"), **PT),
    P("pt", "chat", "contacto: conceição@exemplo.pt", ("email", "conceição@exemplo.pt"), **PT),
    P("pt", "chat", "NIB/IBAN PT50 0002 0123 1234 5678 9015 4",
      ("iban", "PT50 0002 0123 1234 5678 9015 4"), **PT),
    P("pt", "url", "https://loja.example.com.br/checkout?telefone=%2811%29%2091234-5678"
      "&utm_medium=cpc", ("phone", "%2811%29%2091234-5678"), **BR),
    P("pt", "json", '{"lead": {"nome": "Ana", "email": "ana.souza@uol.com.br", '
      '"whatsapp": "+55 11 91234-5678"}}', ("email", "ana.souza@uol.com.br"),
      ("phone", "+55 11 91234-5678"), **BR),
    # --- Italian --------------------------------------------------------------
    P("it", "chat", "Scrivetemi a niccolò@azienda.it", ("email", "niccolò@azienda.it"), **IT),
    P("it", "chat", "Il mio cellulare è 347 123 4567", ("phone", "347 123 4567"), **IT),
    P("it", "chat", "Ufficio di Milano: 02 1234 5678", ("phone", "02 1234 5678"), **IT),
    P("it", "chat", "IBAN IT60 X054 2811 1010 0000 0123 456",
      ("iban", "IT60 X054 2811 1010 0000 0123 456"), **IT),
    P("it", "chat", "chiamami al 333 000 0000 stasera", ("phone", "333 000 0000"), **IT),
    P("it", "json", '{"contatto": "giulia.rossi@libero.it", "telefono": "347 123 4567"}',
      ("email", "giulia.rossi@libero.it"), ("phone", "347 123 4567"), **IT),
    # --- Dutch ----------------------------------------------------------------
    P("nl", "chat", "Mijn mobiel is 06 12345678", ("phone", "06 12345678"), **NL),
    P("nl", "chat", "Bel me op 020 123 4567", ("phone", "020 123 4567"), **NL),
    P("nl", "chat", "mail naar jan.devries@bedrijf.nl aub", ("email", "jan.devries@bedrijf.nl"),
      **NL),
    P("nl", "chat", "Rekening NL91 ABNA 0417 1643 00", ("iban", "NL91 ABNA 0417 1643 00"), **NL),
    P("nl", "chat", "BE68 5390 0754 7034 is onze Belgische rekening",
      ("iban", "BE68 5390 0754 7034"), timezone="Europe/Brussels", language="nl-BE"),
    P("nl", "url", "https://winkel.example.nl/terugbellen?telefoon=06%2012345678",
      ("phone", "06%2012345678"), **NL),
    # --- Polish ---------------------------------------------------------------
    P("pl", "chat", "Mój numer: 512 345 678", ("phone", "512 345 678"), **PL),
    P("pl", "chat", "Proszę dzwonić na 22 123 45 67", ("phone", "22 123 45 67"), **PL),
    P("pl", "chat", "adres: łukasz.wójcik@firma.pl", ("email", "łukasz.wójcik@firma.pl"), **PL),
    P("pl", "chat", "zażółć@gęślą.pl to mój prywatny mail", ("email", "zażółć@gęślą.pl"), **PL),
    P("pl", "chat", "Konto PL61 1090 1014 0000 0712 1981 2874",
      ("iban", "PL61 1090 1014 0000 0712 1981 2874"), **PL),
    P("pl", "json", '{"klient": "Łukasz", "telefon": "512 345 678"}', ("phone", "512 345 678"),
      **PL),
    # --- Swedish --------------------------------------------------------------
    P("sv", "chat", "Ring mig på 070-123 45 67", ("phone", "070-123 45 67"), **SE),
    P("sv", "chat", "Kontoret: 08-123 456 78", ("phone", "08-123 456 78"), **SE),
    P("sv", "chat", "mejla åsa.öberg@företag.se", ("email", "åsa.öberg@företag.se"), **SE),
    P("sv", "chat", "IBAN SE45 5000 0000 0583 9825 7466", ("iban", "SE45 5000 0000 0583 9825 7466"),
      **SE),
    P("sv", "json", '{"kund": "åsa.öberg@företag.se", "mobil": "070-123 45 67"}',
      ("email", "åsa.öberg@företag.se"), ("phone", "070-123 45 67"), **SE),
    # --- Turkish --------------------------------------------------------------
    P("tr", "chat", "Cep telefonum 0532 123 45 67", ("phone", "0532 123 45 67"), **TR),
    P("tr", "chat", "Ofis: 0212 345 67 89", ("phone", "0212 345 67 89"), **TR),
    P("tr", "chat", "e-posta: çağrı.öztürk@şirket.com.tr", ("email", "çağrı.öztürk@şirket.com.tr"),
      **TR),
    P("tr", "chat", "IBAN TR33 0006 1005 1978 6457 8413 26",
      ("iban", "TR33 0006 1005 1978 6457 8413 26"), **TR),
    P("tr", "url", "https://magaza.example.com.tr/iletisim?tel=0532%20123%2045%2067",
      ("phone", "0532%20123%2045%2067"), **TR),
    # --- Russian --------------------------------------------------------------
    P("ru", "chat", "Мой телефон 8 (495) 123-45-67", ("phone", "8 (495) 123-45-67"), **RU),
    P("ru", "chat", "Звоните: 8 916 123-45-67", ("phone", "8 916 123-45-67"), **RU),
    P("ru", "chat", "почта иван.петров@пример.рф", ("email", "иван.петров@пример.рф"), **RU),
    P("ru", "chat", "Пишите на info@компания.рус", ("email", "info@компания.рус"), **RU),
    P("ru", "chat", "ivan.petrov@yandex.ru, тел. 8 916 123-45-67",
      ("email", "ivan.petrov@yandex.ru"), ("phone", "8 916 123-45-67"), **RU),
    P("ru", "json", '{"клиент": "ольга@почта.рф", "телефон": "+7 916 123-45-67"}',
      ("email", "ольга@почта.рф"), ("phone", "+7 916 123-45-67"), **RU),
    # --- Arabic ---------------------------------------------------------------
    P("ar", "chat", "رقمي 055 123 4567 من فضلك اتصل بعد الظهر", ("phone", "055 123 4567"), **SA),
    P("ar", "chat", "جوالي 050 123 4567", ("phone", "050 123 4567"), **AE),
    P("ar", "chat", "البريد: محمد@مثال.السعودية", ("email", "محمد@مثال.السعودية"), **SA),
    P("ar", "chat", "ahmed.ali@company.ae هو بريدي", ("email", "ahmed.ali@company.ae"), **AE),
    P("ar", "chat", "الآيبان SA03 8000 0000 6080 1016 7519", ("iban", "SA03 8000 0000 6080 1016 7519"),
      **SA),
    P("ar", "chat", "هاتف المكتب 010 1234 5678", ("phone", "010 1234 5678"),
      timezone="Africa/Cairo", language="ar-EG"),
    P("ar", "json", '{"العميل": "سارة", "الهاتف": "+971 50 123 4567"}',
      ("phone", "+971 50 123 4567"), **AE),
    # --- Hindi ----------------------------------------------------------------
    P("hi", "chat", "मेरा मोबाइल नंबर 98765 43210 है", ("phone", "98765 43210"), **IN),
    P("hi", "chat", "कृपया संपर्क@डाटामेल.भारत पर मेल करें", ("email", "संपर्क@डाटामेल.भारत"), **IN),
    P("hi", "chat", "rahul.sharma@gmail.com पर कोटेशन भेजें", ("email", "rahul.sharma@gmail.com"),
      **IN),
    P("hi", "chat", "फोन: 022 2345 6789", ("phone", "022 2345 6789"), **IN),
    P("hi", "chat", "कॉल करें 9876543210", ("phone", "9876543210"), **TZ_KOLKATA),
    # --- Japanese -------------------------------------------------------------
    P("ja", "chat", "電話は03-1234-5678です", ("phone", "03-1234-5678"), **JP),
    P("ja", "chat", "携帯：090-1234-5678までご連絡ください", ("phone", "090-1234-5678"), **JP),
    P("ja", "chat", "メールはyamada.taro@example.co.jpです", ("email", "yamada.taro@example.co.jp"),
      **JP),
    P("ja", "chat", "連絡先 yamada＠example.jp", ("email", "yamada＠example.jp"), **JP),
    P("ja", "chat", "たろう@例え.jp に送ってください", ("email", "たろう@例え.jp"), **JP),
    P("ja", "json", '{"顧客": "山田", "電話": "03-1234-5678"}', ("phone", "03-1234-5678"), **JP),
    # --- Chinese --------------------------------------------------------------
    P("zh", "chat", "我的手机是13800138000，谢谢", ("phone", "13800138000"), **CN),
    P("zh", "chat", "电话：138 0013 8000", ("phone", "138 0013 8000"), **CN),
    P("zh", "chat", "办公室电话 010-6552 9988", ("phone", "010-6552 9988"), **CN),
    P("zh", "chat", "邮箱 wang.wei@qq.com", ("email", "wang.wei@qq.com"), **CN),
    P("zh", "chat", "请发到 用户@例子.广告", ("email", "用户@例子.广告"), **CN),
    P("zh", "chat", "联系 张伟@公司.中国", ("email", "张伟@公司.中国"), **CN),
    P("zh", "chat", "台北的手機 0912 345 678", ("phone", "0912 345 678"),
      timezone="Asia/Taipei", language="zh-TW"),
    P("zh", "chat", "手机13912345678，微信同号", ("phone", "13912345678")),
    # --- Korean ---------------------------------------------------------------
    P("ko", "chat", "제 휴대폰 번호는 010-1234-5678 입니다", ("phone", "010-1234-5678"), **KR),
    P("ko", "chat", "사무실 전화 02-312-3456", ("phone", "02-312-3456"), **KR),
    P("ko", "chat", "이메일 kim.minji@naver.com 로 보내주세요", ("email", "kim.minji@naver.com"), **KR),
    P("ko", "chat", "사용자@도메인.한국 으로 연락주세요", ("email", "사용자@도메인.한국"), **KR),
    # --- Other scripts and mixed ----------------------------------------------
    P("el", "chat", "γράψτε μου στο θσερ@παράδειγμα.δοκιμή", ("email", "θσερ@παράδειγμα.δοκιμή")),
    P("de", "chat", "info@xn--bcher-kva.de ist unsere Adresse", ("email", "info@xn--bcher-kva.de"),
      **DE),
    P("en", "chat", "IPv6 fe80::1ff:fe23:4567:890a on the kiosk", ("ipv6", "fe80::1ff:fe23:4567:890a"),
      **US),
    P("en", "chat", "Our Sydney office: 0412 345 678", ("phone", "0412 345 678"),
      timezone="Australia/Sydney", language="en-AU"),
    P("en", "chat", "HK mobile 9123 4567", ("phone", "9123 4567"), timezone="Asia/Hong_Kong"),
    P("en", "chat", "Montreal desk (514) 555-0147", ("phone", "(514) 555-0147"),
      timezone="America/Toronto", language="fr-CA"),
    P("de", "chat", "Schweizer Konto CH93 0076 2011 6238 5295 7", ("iban", "CH93 0076 2011 6238 5295 7"),
      timezone="Europe/Zurich"),
    P("ar", "chat", "الآيبان AE07 0331 2345 6789 0123 456", ("iban", "AE07 0331 2345 6789 0123 456"),
      **AE),
    P("en", "chat", "Discover 6011 1111 1111 1117 and visa 4242424242424242 both fail",
      ("card", "6011 1111 1111 1117"), ("card", "4242424242424242"), **US),
    P("en", "chat", "SSN: 219-09-9999, DOB 1990-05-17", ("ssn", "219-09-9999"),
      keep=("1990-05-17",), **US),
    P("es", "chat", "tarjeta 5500 0000 0000 0004 vence 11/26", ("card", "5500 0000 0000 0004"), **ES),
    P("fr", "chat", "carte 4000 0566 5566 5556 refusée", ("card", "4000 0566 5566 5556"), **FR),
    P("ja", "chat", "カード番号 3530 1113 3330 0000", ("card", "3530 1113 3330 0000"), **JP),
    P("en", "json", '{"event": "login", "ip": "172.16.254.1", "at": "2024-01-15T10:30:00Z"}',
      ("ipv4", "172.16.254.1"), keep=("2024-01-15T10:30:00Z",), **US),
    P("de", "chat", "Mein Router hat 10.0.0.138 und 2a00:1450:4001:82b::200e",
      ("ipv4", "10.0.0.138"), ("ipv6", "2a00:1450:4001:82b::200e"), **DE),
    # Unassigned or fictional numbers: found only through the cue word.
    P("en", "chat", "phone 555 0100, ask for reception", ("phone", "555 0100"), **US),
    P("de", "chat", "Telefon 0000 123456", ("phone", "0000 123456"), **DE),
    P("fr", "chat", "tél : 01 00 00 00 00", ("phone", "01 00 00 00 00"), **FR),
    P("es", "chat", "teléfono 900 000 001", ("phone", "900 000 001"), **ES),
    P("ru", "chat", "телефон 8 (000) 000-00-01", ("phone", "8 (000) 000-00-01"), **RU),
    P("zh", "chat", "电话 010-0000 0001", ("phone", "010-0000 0001"), **CN),
    P("en", "chat", "Fax: 555-0123-44", ("phone", "555-0123-44"), **US),
    # No hints at all: the region comes from the cue word's language.
    P("de", "chat", "Handy: 0171 1234567", ("phone", "0171 1234567")),
    P("fr", "chat", "portable 06 12 34 56 78", ("phone", "06 12 34 56 78")),
    P("pt", "chat", "celular (11) 91234-5678", ("phone", "(11) 91234-5678")),
    P("ja", "chat", "電話 090-1234-5678", ("phone", "090-1234-5678")),
    P("ko", "chat", "전화 010-1234-5678", ("phone", "010-1234-5678")),
    P("it", "chat", "cellulare 347 123 4567", ("phone", "347 123 4567")),
    P("tr", "chat", "cep 0532 123 45 67", ("phone", "0532 123 45 67")),
    P("nl", "chat", "mobiel 06 12345678", ("phone", "06 12345678")),
    # --- Written after the detector was tuned on the entries above -------------
    P("en", "chat", "Send it to <Anna.Kowalski@Northwind.io>", ("email", "Anna.Kowalski@Northwind.io"),
      **US),
    P("en", "url", "mailto:sales.team@example.org?subject=Demo%20request",
      ("email", "sales.team@example.org"), **US),
    P("en", "chat", "reply-to: \"tom.h@contoso.com\"", ("email", "tom.h@contoso.com"), **US),
    P("en", "chat", "CALL ME: 415-555-0132 EXT 22", ("phone", "415-555-0132"), **US),
    P("en", "chat", "I'm at +44 7911 123456 all week", ("phone", "+44 7911 123456"), **GB),
    P("de", "chat", "Erreichbar unter +49 (0)30 901820", ("phone", "+49 (0)30 901820"), **DE),
    P("de", "chat", "Durchwahl 0049 30 901820-14", ("phone", "0049 30 901820"), **DE),
    P("fr", "chat", "Joignable au +33 (0)6 12 34 56 78", ("phone", "+33 (0)6 12 34 56 78"), **FR),
    P("es", "chat", "Whatsapp +34 612 34 56 78", ("phone", "+34 612 34 56 78"), **ES),
    P("en", "chat", "logs show 81.2.69.160 hitting /wp-login 400 times", ("ipv4", "81.2.69.160"),
      **GB),
    P("en", "json", '{"remote_addr": "100.64.12.9", "status": 502}', ("ipv4", "100.64.12.9"), **US),
    P("ru", "chat", "мой IP 95.165.12.34, сайт не открывается", ("ipv4", "95.165.12.34"), **RU),
    P("ja", "chat", "IPアドレスは192.0.2.55です", ("ipv4", "192.0.2.55"), **JP),
    P("en", "chat", "IPv6 is 2001:db8::ff00:42:8329", ("ipv6", "2001:db8::ff00:42:8329"), **US),
    P("de", "json", '{"ip": "2a02:8108:1940:3b00::1"}', ("ipv6", "2a02:8108:1940:3b00::1"), **DE),
    P("en", "chat", "my ssn is 536-22-8108 if you need it", ("ssn", "536-22-8108"), **US),
    P("en", "json", '{"applicant": {"ssn": "SSN 601-44-2390"}}', ("ssn", "601-44-2390"), **US),
    P("en", "chat", "visa 4111-1111-1111-1111 cvv 123", ("card", "4111-1111-1111-1111"), **US),
    P("de", "chat", "Karte 5555 5555 5555 4444 bitte belasten", ("card", "5555 5555 5555 4444"),
      **DE),
    P("en", "chat", "IBAN: DE75 5121 0800 1245 1261 99", ("iban", "DE75 5121 0800 1245 1261 99"),
      **DE),
    P("fr", "chat", "RIB FR76 3000 6000 0112 3456 7890 189", ("iban", "FR76 3000 6000 0112 3456 7890 189"),
      **FR),
    P("it", "chat", "Per il rimborso: IT60X0542811101000000123456", ("iban", "IT60X0542811101000000123456"),
      **IT),
    P("es", "chat", "Escríbeme: maría-josé@correo.es", ("email", "maría-josé@correo.es"), **ES),
    P("pt", "chat", "email da empresa: vendas@açaí-brasil.com.br", ("email", "vendas@açaí-brasil.com.br"),
      **BR),
    P("ru", "chat", "Почта: Елена.Смирнова@Почта.РФ", ("email", "Елена.Смирнова@Почта.РФ"), **RU),
    P("zh", "chat", "我的邮箱是li.na@163.com，电话13800138000",
      ("email", "li.na@163.com"), ("phone", "13800138000"), **CN),
    P("ko", "chat", "010 1234 5678로 전화 주세요", ("phone", "010 1234 5678"), **KR),
    P("ja", "chat", "折り返しは03 1234 5678へ", ("phone", "03 1234 5678"), **JP),
    P("tr", "chat", "Numaram 0532 123 4567", ("phone", "0532 123 4567"), **TR),
    P("pl", "chat", "Zadzwoń: +48 512 345 678", ("phone", "+48 512 345 678"), **PL),
    P("sv", "chat", "Min mobil: 070 123 45 67", ("phone", "070 123 45 67"), **SE),
    P("nl", "chat", "Tel: +31 6 12345678", ("phone", "+31 6 12345678"), **NL),
    P("ar", "chat", "اتصل بي على 0501234567", ("phone", "0501234567"), **AE),
    P("hi", "chat", "मेरा नंबर +91 98765 43210", ("phone", "+91 98765 43210"), **IN),
    P("en", "title", "Booking for kim.minji@naver.com confirmed", ("email", "kim.minji@naver.com"),
      **KR),
    P("de", "url", "https://shop.example.de/suche?q=anna.schäfer%40mail.de", ("email", "anna.schäfer%40mail.de"),
      **DE),
]

LOOKALIKES: typing.List[Entry] = [
    # --- English --------------------------------------------------------------
    L("en", "chat", "Is version 2.4.1 compatible with Shopify?", **US),
    L("en", "chat", "We upgraded to v1.2.3.4 last week", **US),
    L("en", "chat", "The Pro plan is $1,299.00 per year, or $129 monthly", **US),
    L("en", "chat", "Invoice 2024-000123 is still open", **US),
    L("en", "chat", "Order #1234567 shipped on 2024-01-15", **US),
    L("en", "chat", "my order number is ORD-2024-118734", **US),
    L("en", "chat", "Tracking 1Z999AA10123456784 shows delivered", **US),
    L("en", "chat", "ISBN 978-3-16-148410-0 is the book", **US),
    L("en", "chat", "Zip 94043-1351, suite 400", **US),
    L("en", "chat", "our HQ is at 37.4220936, -122.083922", **US),
    L("en", "chat", "lat 51.507351 lon -0.127758 for the London store", **GB),
    L("en", "chat", "session s-20240115-000042 expired at 12:30:45", **US),
    L("en", "chat", "we sold 1,234,567 units in 2023", **US),
    L("en", "chat", "Screen is 1920x1080, viewport 1280 x 720", **US),
    L("en", "chat", "the meeting is 15/01/2024 at 10:30", **GB),
    L("en", "chat", "call me tomorrow at 10:30 please", **US),
    L("en", "chat", "phone case for iPhone 15 Pro Max, 256GB", **US),
    L("en", "chat", "Do you have a mobile app? I'm on Android 14", **US),
    L("en", "chat", "The call lasted 45 minutes on 2024-02-01", **US),
    L("en", "chat", "Phone support ticket TCK-88213577 is closed", **US),
    L("en", "chat", "mobile plan 2024-03 costs $45.99", **US),
    L("en", "chat", "We have 20 seats for 3 teams", **US),
    L("en", "chat", "Our API returned error 429 after 1000 requests", **US),
    L("en", "chat", "uuid 550e8400-e29b-41d4-a716-446655440000 is the tenant", **US),
    L("en", "chat", "build 20240115.1 is on staging", **US),
    L("en", "chat", "timestamp 1705314600000 in the logs", **US),
    L("en", "chat", "user 9876543210123 in the export", **US),
    L("en", "chat", "Customer id 12345678901 from Salesforce", **US),
    L("en", "chat", "Chrome/124.0.6367.91 on Windows 10.0", **US),
    L("en", "chat", "the discount code SPRING2024 gives 15% off", **US),
    L("en", "chat", "it costs 1299.00 USD incl. tax", **US),
    L("en", "chat", "call 1-800-FLOWERS for the gift", **US),
    L("en", "chat", "my phone broke, I'll write from my laptop", **US),
    L("en", "chat", "contact us about invoice INV-2024-000123", **US),
    L("en", "chat", "ratio 16:9 at 60 fps", **US),
    L("en", "chat", "postcode SW1A 1AA, flat 12", **GB),
    L("en", "chat", "Ref: 2024/118734 - please quote it", **GB),
    L("en", "chat", "£1,499.99 for the annual licence", **GB),
    L("en", "chat", "₹1,29,999 for the enterprise bundle", **IN),
    L("en", "chat", "Reach me by email instead, no phone please", **US),
    L("en", "url", "https://shop.example.com/products/widget-pro?ref=nav&utm_source=google"
      "&utm_medium=cpc&utm_campaign=brand", **US),
    L("en", "url", "https://shop.example.com/blog/2024/01/15/ai-sales-assistants", **US),
    L("en", "url", "https://shop.example.com/order/ORD-2024-118734?status=shipped", **US),
    L("en", "url", "https://www.bing.com/search?q=ai+chat+widget+pricing+2024", **US),
    L("en", "url", "https://shop.example.com/cart?item=sku_88213577&qty=2&price=1299.00", **US),
    L("en", "url", "https://maps.example.com/?ll=37.4220936,-122.083922&z=15", **US),
    L("en", "url", "https://shop.example.com/download?v=2.4.1&build=20240115", **US),
    L("en", "url", "https://shop.example.com/checkout?session=sess_1705314600000_ab12cd", **US),
    L("en", "url", "/docs/getting-started#section-3.2.1", **US),
    L("en", "title", "Widget Pro - $1,299.00 | Example Shop", **US),
    L("en", "title", "Release notes 2.4.1 (2024-01-15)", **US),
    L("en", "title", "Order ORD-2024-118734 confirmed", **US),
    L("en", "title", "Call us - Mon-Fri 9:00-17:00", **US),
    L("en", "title", "Phone plans from $19.99/month", **US),
    L("en", "json", '{"order_id": "ORD-2024-118734", "total": "$1,299.00", "items": 3}', **US),
    L("en", "json", '{"version": "2.4.1", "released": "2024-01-15T10:30:00Z"}', **US),
    L("en", "json", '{"lat": 37.4220936, "lng": -122.083922, "zoom": 15}', **US),
    L("en", "json", '{"tool": "inventory", "sku": "WP-1299", "stock": 1234567}', **US),
    L("en", "json", '{"ticket": 48213577, "created_ms": 1705314600000}', **US),
    L("en", "json", '{"resolution": "2560x1440", "dpr": 1.5}', **US),
    # --- German ---------------------------------------------------------------
    L("de", "chat", "Ist Version 2.4.1 mit Shopware kompatibel?", **DE),
    L("de", "chat", "Der Preis liegt bei 1.299,00 € im Jahr", **DE),
    L("de", "chat", "Rechnung vom 15.01.2024, Betrag 249,90 EUR", **DE),
    L("de", "chat", "Bestellung 2024-000123 ist noch nicht angekommen", **DE),
    L("de", "chat", "Kundennummer KD-4471182, Vertrag 24 Monate", **DE),
    L("de", "chat", "Unser Büro: 10115 Berlin, Invalidenstraße 117", **DE),
    L("de", "chat", "Koordinaten 52.520008, 13.404954", **DE),
    L("de", "chat", "Handyvertrag mit 10 GB für 9,99 € im Monat", **DE),
    L("de", "chat", "Telefon-Support ist Mo-Fr 8-18 Uhr erreichbar", **DE),
    L("de", "chat", "Das Telefonat am 12.03.2024 um 14:30 war hilfreich", **DE),
    L("de", "chat", "Wir haben 1.234.567 Besucher pro Jahr", **DE),
    L("de", "chat", "Artikelnummer 4006381333931 ist ausverkauft", **DE),
    L("de", "chat", "Lieferung KW 12/2024", **DE),
    L("de", "url", "https://shop.example.de/produkte/widget-pro?ref=nav&utm_source=newsletter", **DE),
    L("de", "url", "https://shop.example.de/bestellung/2024-000123?status=versandt", **DE),
    L("de", "title", "Widget Pro – 1.299,00 € | Beispiel-Shop", **DE),
    L("de", "title", "Versionshinweise 2.4.1 vom 15.01.2024", **DE),
    L("de", "json", '{"bestellnr": "B-2024-000123", "summe": "1.299,00 €", "datum": "15.01.2024"}',
      **DE),
    L("de", "json", '{"plz": "80331", "ort": "München", "lat": 48.137154, "lon": 11.576124}', **DE),
    L("de", "chat", "Handy-Modell SM-G991B mit Android 14", **DE),
    # --- French ---------------------------------------------------------------
    L("fr", "chat", "La version 2.4.1 est-elle compatible avec PrestaShop ?", **FR),
    L("fr", "chat", "Le prix est de 1 299,00 € par an", **FR),
    L("fr", "chat", "Facture du 15/01/2024, commande n° CMD-2024-00981", **FR),
    L("fr", "chat", "Nos bureaux : 75008 Paris, 8 rue de la Paix", **FR),
    L("fr", "chat", "Coordonnées GPS 48.856613, 2.352222", **FR),
    L("fr", "chat", "mon téléphone est en panne depuis le 12/03/2024", **FR),
    L("fr", "chat", "forfait mobile 20 Go à 9,99 €", **FR),
    L("fr", "chat", "appelez le service client entre 9h et 18h", **FR),
    L("fr", "chat", "SIRET 732 829 320 00074", **FR),
    L("fr", "url", "https://boutique.example.fr/produits/widget-pro?utm_source=google&utm_medium=cpc",
      **FR),
    L("fr", "title", "Widget Pro – 1 299,00 € | Boutique", **FR),
    L("fr", "json", '{"commande": "CMD-2024-00981", "total": "1 299,00 €", "date": "15/01/2024"}',
      **FR),
    # --- Spanish --------------------------------------------------------------
    L("es", "chat", "¿La versión 2.4.1 funciona con WooCommerce?", **ES),
    L("es", "chat", "El precio es de 1.299,00 € al año", **ES),
    L("es", "chat", "Pedido PED-2024-00981 del 15/01/2024", **ES),
    L("es", "chat", "Nuestra oficina: 28013 Madrid, Calle Mayor 10", **ES),
    L("es", "chat", "Coordenadas 40.416775, -3.703790", **ES),
    L("es", "chat", "mi teléfono no carga la página de pago", **ES),
    L("es", "chat", "Cuesta $1,299.00 MXN con envío", **MX),
    L("es", "chat", "NIF B-12345678 para la factura", **ES),
    L("es", "url", "https://tienda.example.es/productos/widget-pro?ref=nav&utm_campaign=verano", **ES),
    L("es", "title", "Widget Pro – 1.299,00 € | Tienda", **ES),
    L("es", "json", '{"pedido": "PED-2024-00981", "total": "1.299,00 €", "unidades": 1234567}', **ES),
    # --- Portuguese -----------------------------------------------------------
    L("pt", "chat", "A versão 2.4.1 é compatível com a Nuvemshop?", **BR),
    L("pt", "chat", "Custa R$ 1.299,90 por ano", **BR),
    L("pt", "chat", "Pedido PED-2024-00981 de 15/01/2024", **BR),
    L("pt", "chat", "CEP 01310-100, Avenida Paulista 1578", **BR),
    L("pt", "chat", "Coordenadas -23.561414, -46.655881", **BR),
    L("pt", "chat", "meu celular está sem bateria, respondo amanhã", **BR),
    L("pt", "chat", "plano de celular de 20 GB por R$ 49,90", **BR),
    L("pt", "url", "https://loja.example.com.br/produtos/widget-pro?utm_source=google&utm_medium=cpc",
      **BR),
    L("pt", "title", "Widget Pro – R$ 1.299,90 | Loja", **BR),
    L("pt", "json", '{"pedido": "PED-2024-00981", "total": "R$ 1.299,90", "data": "15/01/2024"}',
      **BR),
    # --- Italian --------------------------------------------------------------
    L("it", "chat", "La versione 2.4.1 è compatibile con Magento?", **IT),
    L("it", "chat", "Il prezzo è 1.299,00 € all'anno", **IT),
    L("it", "chat", "Ordine ORD-2024-118734 del 15/01/2024", **IT),
    L("it", "chat", "Sede: 20121 Milano, Via Dante 7", **IT),
    L("it", "chat", "Coordinate 45.464664, 9.188540", **IT),
    L("it", "chat", "Partita IVA IT 01234567890 in fattura", **IT),
    L("it", "url", "https://negozio.example.it/prodotti/widget-pro?utm_source=newsletter", **IT),
    L("it", "json", '{"ordine": "ORD-2024-118734", "totale": "1.299,00 €"}', **IT),
    # --- Dutch ----------------------------------------------------------------
    L("nl", "chat", "Werkt versie 2.4.1 met Lightspeed?", **NL),
    L("nl", "chat", "De prijs is € 1.299,00 per jaar", **NL),
    L("nl", "chat", "Bestelling 2024-000123 van 15-01-2024", **NL),
    L("nl", "chat", "Postcode 1012 AB Amsterdam", **NL),
    L("nl", "chat", "mijn telefoon is kapot, ik mail wel", **NL),
    L("nl", "url", "https://winkel.example.nl/producten/widget-pro?utm_medium=email", **NL),
    # --- Polish ---------------------------------------------------------------
    L("pl", "chat", "Czy wersja 2.4.1 działa z Shoper?", **PL),
    L("pl", "chat", "Cena to 1 299,00 zł rocznie", **PL),
    L("pl", "chat", "Zamówienie ZAM-2024-00981 z 15.01.2024", **PL),
    L("pl", "chat", "NIP 123-456-32-18 do faktury", **PL),
    L("pl", "chat", "Kod pocztowy 00-950 Warszawa", **PL),
    L("pl", "url", "https://sklep.example.pl/produkty/widget-pro?utm_source=google", **PL),
    # --- Swedish --------------------------------------------------------------
    L("sv", "chat", "Fungerar version 2.4.1 med Shopify?", **SE),
    L("sv", "chat", "Priset är 12 999 kr per år", **SE),
    L("sv", "chat", "Order 2024-000123 skickades 2024-01-15", **SE),
    L("sv", "chat", "Postnummer 111 52 Stockholm", **SE),
    L("sv", "chat", "Organisationsnummer 556036-0793", **SE),
    # --- Turkish --------------------------------------------------------------
    L("tr", "chat", "Sürüm 2.4.1 Ticimax ile uyumlu mu?", **TR),
    L("tr", "chat", "Fiyatı yıllık 12.999,00 TRY", **TR),
    L("tr", "chat", "Sipariş SIP-2024-00981, 15.01.2024 tarihli", **TR),
    L("tr", "chat", "Koordinatlar 41.008238, 28.978359", **TR),
    L("tr", "chat", "telefonum bozuk, e-posta ile yazıyorum", **TR),
    # --- Russian --------------------------------------------------------------
    L("ru", "chat", "Версия 2.4.1 совместима с 1С-Битрикс?", **RU),
    L("ru", "chat", "Цена 129 990 руб. в год", **RU),
    L("ru", "chat", "Заказ ЗАК-2024-00981 от 15.01.2024", **RU),
    L("ru", "chat", "Индекс 101000, Москва", **RU),
    L("ru", "chat", "Координаты 55.755826, 37.617300", **RU),
    L("ru", "chat", "ИНН 7707083893 для счёта", **RU),
    L("ru", "chat", "телефон сломался, пишу с ноутбука", **RU),
    # --- Arabic ---------------------------------------------------------------
    L("ar", "chat", "هل الإصدار 2.4.1 متوافق مع سلة؟", **SA),
    L("ar", "chat", "السعر 4,999.00 SAR سنويا", **SA),
    L("ar", "chat", "الطلب ORD-2024-118734 بتاريخ 2024-01-15", **SA),
    L("ar", "chat", "الإحداثيات 24.713552, 46.675296", **SA),
    L("ar", "chat", "هاتفي لا يعمل، سأرسل بريدا", **SA),
    # --- Hindi ----------------------------------------------------------------
    L("hi", "chat", "क्या संस्करण 2.4.1 Shopify के साथ काम करता है?", **IN),
    L("hi", "chat", "कीमत ₹1,29,999 प्रति वर्ष है", **IN),
    L("hi", "chat", "ऑर्डर ORD-2024-118734 दिनांक 15/01/2024", **IN),
    L("hi", "chat", "पिन कोड 110001, नई दिल्ली", **IN),
    L("hi", "chat", "GSTIN 27AAPFU0939F1ZV बिल पर", **IN),
    # --- Japanese -------------------------------------------------------------
    L("ja", "chat", "バージョン2.4.1はShopifyに対応していますか？", **JP),
    L("ja", "chat", "価格は年間¥129,800です", **JP),
    L("ja", "chat", "注文番号 ORD-2024-118734（2024年1月15日）", **JP),
    L("ja", "chat", "〒100-0001 東京都千代田区", **JP),
    L("ja", "chat", "電話が故障しているのでメールで連絡します", **JP),
    L("ja", "chat", "座標 35.681236, 139.767125", **JP),
    # --- Chinese --------------------------------------------------------------
    L("zh", "chat", "版本2.4.1支持Shopify吗？", **CN),
    L("zh", "chat", "价格是每年¥12,999", **CN),
    L("zh", "chat", "订单号 ORD-2024-118734，日期 2024-01-15", **CN),
    L("zh", "chat", "邮编 100000，北京市", **CN),
    L("zh", "chat", "我的手机坏了，请发邮件", **CN),
    L("zh", "chat", "坐标 39.904202, 116.407394", **CN),
    L("zh", "chat", "统一社会信用代码 91110000802100433B", **CN),
    # --- Korean ---------------------------------------------------------------
    L("ko", "chat", "버전 2.4.1은 카페24와 호환되나요?", **KR),
    L("ko", "chat", "가격은 연 1,299,000원입니다", **KR),
    L("ko", "chat", "주문번호 ORD-2024-118734 (2024-01-15)", **KR),
    L("ko", "chat", "우편번호 04524 서울", **KR),
    L("ko", "chat", "전화가 안 되니 메일로 주세요", **KR),
    # --- Cue words next to things that are not phone numbers -------------------
    L("en", "chat", "Phone order 2024-000123 arrived damaged", **US),
    L("en", "chat", "call about order ORD-2024-118734 please", **US),
    L("en", "chat", "my phone runs iOS 17.4.1", **US),
    L("en", "chat", "mobile app build 20240115 crashes", **US),
    L("en", "chat", "tel: see invoice INV-2024-000123", **US),
    L("en", "chat", "Phone: $1,299.00 for 24 months", **US),
    L("en", "chat", "call me on 15/01/2024 at 10:30", **US),
    L("en", "chat", "whatsapp version 2.24.6.78 on Android", **US),
    L("en", "chat", "cell C12 shows 1234567 in the export", **US),
    L("de", "chat", "Telefon: Bestellung B-2024-000123 fehlt", **DE),
    L("de", "chat", "Handy ist am 15.01.2024 um 14:30 angekommen", **DE),
    L("de", "chat", "Tel. Sprechzeiten 08:00-18:00", **DE),
    L("fr", "chat", "téléphone livré le 15/01/2024, commande CMD-2024-00981", **FR),
    L("fr", "chat", "portable à 1 299,00 €", **FR),
    L("es", "chat", "teléfono comprado el 15/01/2024 por 1.299,00 €", **ES),
    L("pt", "chat", "celular custou R$ 1.299,90 em 15/01/2024", **BR),
    L("ru", "chat", "телефон за 129 990 руб. от 15.01.2024", **RU),
    L("ja", "chat", "電話の件、注文番号 ORD-2024-118734", **JP),
    L("zh", "chat", "手机价格¥12,999，订单 ORD-2024-118734", **CN),
    L("ko", "chat", "휴대폰 주문 ORD-2024-118734", **KR),
    L("en", "chat", "phone screen 2556x1179 px", **US),
    L("en", "chat", "call center at 37.4220936, -122.083922", **US),
    L("en", "chat", "Fax is v2.3.1.4 firmware", **US),
    L("en", "chat", "mobile 1705314600000 ms timestamp", **US),
    # --- Emails that are not addresses ---------------------------------------
    L("en", "chat", "user@localhost can't log in", **US),
    L("en", "chat", "ping @support about the bug", **US),
    L("en", "chat", "meet @ 10:30 in room 4", **US),
    L("en", "chat", "our handle is @ExampleShop on X", **US),
    L("en", "chat", "token [EMAIL:3141592653] was issued", **US),
    L("ja", "chat", "＠ExampleShop をフォローしてください", **JP),
    L("en", "chat", "the npm package @scope/widget@2.4.1", **US),
    L("en", "chat", "git clone git@github", **US),
    # --- Written after the detector was tuned on the entries above -------------
    L("en", "chat", "Can you ship 250 units by 2024-07-01?", **US),
    L("en", "chat", "Our SLA is 99.95% with 4h response", **US),
    L("en", "chat", "the page loads in 1.234 s on 4G", **US),
    L("en", "chat", "PO 4500012345 needs approval", **US),
    L("en", "chat", "account 0012345678 at our bank is closed", **US),
    L("en", "chat", "We moved to 1600 Amphitheatre Pkwy, Mountain View, CA 94043", **US),
    L("en", "chat", "Pricing: 3 seats x $49 = $147/month", **US),
    L("en", "chat", "ticket #48213577 reopened", **US),
    L("en", "chat", "Doors open 09:00-17:30, Mon-Sat", **US),
    L("en", "chat", "RAM 16 GB, SSD 512 GB, display 2560 x 1600", **US),
    L("en", "chat", "EAN 4006381333931 and UPC 036000291452", **US),
    L("en", "url", "https://shop.example.com/p/12345678?variant=87654321&utm_content=banner_728x90", **US),
    L("en", "url", "https://shop.example.com/search?q=order+2024-000123", **US),
    L("en", "json", '{"event_id": "evt_01HMX3Q8K2", "ts": 1705314600, "amount_cents": 129900}', **US),
    L("en", "json", '{"build": "20240115.3", "commit": "a3f5c9e2b7d14f6a"}', **US),
    L("de", "chat", "Lieferzeit 3-5 Werktage, Versand ab 49,00 €", **DE),
    L("de", "chat", "Steuernummer 21/815/08150 im Impressum", **DE),
    L("de", "chat", "Öffnungszeiten 9:00 bis 18:00, Sa 10:00-14:00", **DE),
    L("de", "chat", "Die Rechnung Nr. 2024/00123 ist bezahlt", **DE),
    L("fr", "chat", "Livraison sous 3 à 5 jours, dès 49,00 €", **FR),
    L("fr", "chat", "Référence produit 3760123456789", **FR),
    L("es", "chat", "Envío en 24/48 h, desde 49,00 €", **ES),
    L("es", "chat", "Horario de 9:00 a 18:00 de lunes a viernes", **ES),
    L("pt", "chat", "Frete grátis acima de R$ 299,00", **BR),
    L("it", "chat", "Spedizione in 3-5 giorni lavorativi, da 49,00 €", **IT),
    L("nl", "chat", "Levering binnen 2 werkdagen vanaf € 49,00", **NL),
    L("pl", "chat", "Dostawa 2-3 dni robocze, od 49,00 zł", **PL),
    L("sv", "chat", "Leverans inom 2-4 dagar, från 499 kr", **SE),
    L("tr", "chat", "Kargo 2-3 iş günü, 499,00 TRY üzeri ücretsiz", **TR),
    L("ru", "chat", "Доставка 2-3 дня, от 4 990 руб.", **RU),
    L("ar", "chat", "التوصيل خلال 2-3 أيام عمل", **SA),
    L("hi", "chat", "डिलीवरी 2-3 दिनों में, ₹4,999 से ऊपर मुफ्त", **IN),
    L("ja", "chat", "配送は2〜3営業日、¥4,980以上で送料無料", **JP),
    L("zh", "chat", "2-3个工作日发货，满¥499包邮", **CN),
    L("ko", "chat", "배송은 2-3 영업일, 49,000원 이상 무료", **KR),
    L("en", "title", "Widget Pro 2024 Edition - Model WP-2024-PRO", **US),
    L("de", "title", "Angebot gültig bis 31.12.2024", **DE),
    L("ja", "title", "新製品 2024年モデル 発売", **JP),
]


# --- scoring -------------------------------------------------------------------
class Report(typing.NamedTuple):
    planted: typing.Dict[str, int]  # kind -> values planted
    caught: typing.Dict[str, int]  # kind -> values redacted as that kind
    lookalikes: int
    kept: int  # look-alike snippets that came out byte-identical
    kept_parts: int  # ``keep`` parts of PII snippets
    kept_parts_ok: int
    misses: typing.List[typing.Tuple[str, str, str]]  # (kind, value, output)
    damaged: typing.List[typing.Tuple[str, str]]  # (input, output)

    def recall(self, kind: str) -> float:
        return self.caught.get(kind, 0) / self.planted[kind]

    @property
    def kept_share(self) -> float:
        return self.kept / self.lookalikes

    def lines(self) -> typing.List[str]:
        out = [f"{'kind':<6} {'planted':>7} {'caught':>6} {'recall':>7}"]
        for kind in sorted(self.planted):
            out.append(f"{kind:<6} {self.planted[kind]:>7} {self.caught.get(kind, 0):>6} "
                       f"{100 * self.recall(kind):>6.1f}%")
        out.append(f"look-alikes kept: {self.kept}/{self.lookalikes} = "
                   f"{100 * self.kept_share:.1f}%")
        out.append(f"parts of PII snippets kept: {self.kept_parts_ok}/{self.kept_parts}")
        return out


def redact_entry(redactor, entry: Entry) -> str:
    """The snippet as the pipelines would store it: a record carrying the
    event's hints, its text redacted through ``redact_record``."""
    record = dict(entry.hints, text=entry.text)
    out, _ = redactor.redact_record(record, ("text",), nested_fields=())
    return out["text"]


def evaluate(redactor) -> Report:
    planted: typing.Dict[str, int] = {}
    caught: typing.Dict[str, int] = {}
    misses, damaged = [], []
    kept_parts = kept_parts_ok = 0
    for entry in PII:
        output = redact_entry(redactor, entry)
        per_kind: typing.Dict[str, int] = {}
        for kind, _ in entry.pii:
            per_kind[kind] = per_kind.get(kind, 0) + 1
        for kind, value in entry.pii:
            planted[kind] = planted.get(kind, 0) + 1
            gone = value.lower() not in output.lower()
            tokens = output.count(f"[{kind.upper()}:")
            if gone and tokens >= per_kind[kind]:
                caught[kind] = caught.get(kind, 0) + 1
            else:
                misses.append((kind, value, output))
        for part in entry.keep:
            kept_parts += 1
            kept_parts_ok += part in output
            if part not in output:
                damaged.append((entry.text, output))
    kept = 0
    for entry in LOOKALIKES:
        output = redact_entry(redactor, entry)
        if output == entry.text:
            kept += 1
        else:
            damaged.append((entry.text, output))
    return Report(planted, caught, len(LOOKALIKES), kept, kept_parts, kept_parts_ok,
                  misses, damaged)
